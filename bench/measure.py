"""What the side-by-side benches share: a command timed with the peak memory of its whole process
tree, PDF page counts, a bench's own Weaviate ports, and a managed Weaviate in a throw-away folder.

Memory is sampled from /proc every 0.2 s over the command and all its descendants (a pipeline
with worker processes is charged for all of them): the peak of the summed RSS (pages shared
after fork count once per process, as `ps` shows them), the peak of the summed PSS (shared
pages split between their sharers: what the tree really holds), and the largest single
process's RSS. A Weaviate started by the bench runs in its own
session, outside the tree, so neither side is charged for the database they share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared/corpus"
DEFAULT_HTTP_PORT = 28080
DEFAULT_GRPC_PORT = 25051


@dataclass(frozen=True)
class Measured:
    """One command's wall time, exit code, output and memory."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_tree_rss_mb: float
    peak_tree_pss_mb: float
    max_process_rss_mb: float


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found: list[int] = []
        for task in tasks:
            text = (task / "children").read_text()
            found.extend(int(child) for child in text.split())
        return found
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _rss_pss_bytes(pid: int) -> tuple[int, int]:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0
    kib = {
        line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if ":" in line
    }
    return kib.get("Rss", 0) * 1024, kib.get("Pss", 0) * 1024


def tree_memory(root: int) -> tuple[int, int, int]:
    """(summed RSS, summed PSS, largest RSS) of `root` and every process below it, in bytes."""
    rss = pss = largest = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        one_rss, one_pss = _rss_pss_bytes(pid)
        rss, pss, largest = rss + one_rss, pss + one_pss, max(largest, one_rss)
        stack.extend(_children(pid))
    return rss, pss, largest


def run_measured(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> Measured:
    """Run `command` to its end, sampling the memory of its process tree meanwhile."""
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peaks = [0, 0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for index, value in enumerate(tree_memory(process.pid)):
                peaks[index] = max(peaks[index], value)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
        if process.poll() is None:
            process.kill()
    seconds = time.perf_counter() - started
    return Measured(
        seconds=seconds,
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        peak_tree_rss_mb=peaks[0] / 2**20,
        peak_tree_pss_mb=peaks[1] / 2**20,
        max_process_rss_mb=peaks[2] / 2**20,
    )


def pdf_pages(folder: Path) -> int:
    """Pages of every PDF under `folder`, counted with pypdf."""
    from pypdf import PdfReader

    return sum(len(PdfReader(path).pages) for path in sorted(folder.rglob("*.pdf")))


def add_port_options(parser: argparse.ArgumentParser) -> None:
    """--http-port/--grpc-port for the bench's own Weaviate (env FRESHKB_BENCH_WEAVIATE_*)."""
    parser.add_argument(
        "--http-port",
        type=int,
        default=int(os.environ.get("FRESHKB_BENCH_WEAVIATE_HTTP_PORT", DEFAULT_HTTP_PORT)),
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=int(os.environ.get("FRESHKB_BENCH_WEAVIATE_GRPC_PORT", DEFAULT_GRPC_PORT)),
    )


def bench_environment(work: Path, http_port: int, grpc_port: int) -> dict[str, str]:
    """The throw-away environment of bench/throwaway.py, on the given Weaviate ports."""
    from throwaway import use_throwaway_environment

    use_throwaway_environment(work)
    os.environ["FRESHKB_WEAVIATE_HTTP_PORT"] = str(http_port)
    os.environ["FRESHKB_WEAVIATE_GRPC_PORT"] = str(grpc_port)
    # Prefect's ephemeral server can take minutes to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    return dict(os.environ)


def cold_cache(work: Path) -> Path:
    """A cache directory with nothing cached but what setup makes once per machine: the
    Weaviate binary and the ONNX export of the model (kept, as links to the user's cache)."""
    from freshkb.core.config import Settings

    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    real = Settings().cache_dir
    for kept in ("weaviate", "onnx"):
        if (real / kept).exists() and not (cache / kept).exists():
            (cache / kept).symlink_to(real / kept)
    return cache


@contextmanager
def managed_weaviate(work: Path, http_port: int, grpc_port: int) -> Iterator[float]:
    """A freshkb-managed Weaviate with its data in `work`; yields its start-up seconds."""
    bench_environment(work, http_port, grpc_port)
    from freshkb.core.config import Settings
    from freshkb.store import server

    settings = Settings()
    started = time.perf_counter()
    server.up(settings)
    try:
        yield time.perf_counter() - started
    finally:
        server.down(settings)


def count_objects(http_port: int, grpc_port: int, collection: str | None = None) -> int:
    """Objects in `collection`, or in every collection, of the Weaviate on these ports."""
    import weaviate

    with weaviate.connect_to_local(host="127.0.0.1", port=http_port, grpc_port=grpc_port) as client:
        names = [collection] if collection else list(client.collections.list_all())
        return sum(
            client.collections.get(name).aggregate.over_all(total_count=True).total_count or 0
            for name in names
        )
