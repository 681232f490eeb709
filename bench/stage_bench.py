"""Stage ratios of freshkb's ingest: write vs bare client, Prefect overhead, re-ingest, memory.

    .venv/bin/python bench/stage_bench.py [--quick] [--only write,prefect,reingest,memory] [--json]
                                          [--http-port 28080 --grpc-port 25051]

(a) write: the flow's "write" stage (run report) against a bare weaviate-client batch import
    (`collection.batch.dynamic()`) of the same objects (UUIDs, properties, vectors, read back
    from freshkb's collection) into a new collection of the same configuration; goal: freshkb
    writes at >= 90% of the bare import's speed.
(b) prefect: the same first ingest run as the Prefect flow against a running Prefect server
    (as deployed and scheduled runs go; the server started before, not counted) and as plain
    calls (every task and flow of freshkb.flows replaced by its `.fn`, Prefect's run logger and
    artifact by no-ops), each in a fresh process, data directory and Weaviate; goal: overhead
    <= 5% of the flow. The one-off run of (a) against Prefect's temporary server is reported
    beside it (`one_off_overhead`): that adds the temporary server's start-up.
(c) reingest: an unchanged re-ingest right after the first, in the same process (as
    bench/ingest_bench.py does); goal: <= 3% of the first.
(d) memory: peak PSS/RSS of the whole process tree (Prefect's ephemeral server included) of a
    flow ingesting a corpus vs the same corpus repeated 10x (copies under new names); goal:
    < 1.5x.

(a)-(c) use ../shared/corpus/policies/benefits-pdfs, (d) outdoor-manuals; `--quick`: 3 small
PDFs, and 3 manuals (x1 vs x10). Each ingest runs in its own process (bench/measure.py times it
and samples its memory) against a fresh throw-away data directory and Weaviate (started before
and stopped after, not counted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (
    CORPUS,
    ROOT,
    Measured,
    add_port_options,
    cold_cache,
    managed_weaviate,
    run_measured,
)

BENEFITS = CORPUS / "policies/benefits-pdfs"
MANUALS = CORPUS / "policies/outdoor-manuals"
QUICK_PDFS = ["PerksPlus.pdf", "Benefit_Options.pdf", "employee_handbook.pdf"]
QUICK_MANUALS = ["product_info_1.md", "product_info_2.md", "product_info_3.md"]
GOALS = {"write": 0.90, "prefect": 0.05, "reingest": 0.03, "memory": 1.5}
BARE_COLLECTION = "BareImportBench"
FIGURES = ("write", "prefect", "reingest", "memory")


# ---- worker side: runs inside the measured process ------------------------------------------


def _source_config(folder: Path) -> dict[str, Any]:
    return {"name": "bench", "kind": "documents", "location": str(folder), "owner": "bench"}


def strip_prefect() -> Any:
    """Replace every Prefect task and flow in freshkb.flows by its plain function; returns the
    plain ingest function. Prefect's run logger and artifacts need a run, so they become
    a standard logger and a no-op."""
    from prefect import Flow, Task

    import freshkb.flows.ingest as ingest_module

    plain_logger = logging.getLogger("freshkb.flows")
    for name, module in list(sys.modules.items()):
        if not name.startswith("freshkb.flows") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, Task | Flow):
                setattr(module, attr, value.fn)
        if hasattr(module, "get_run_logger"):
            module.get_run_logger = lambda *args, **kwargs: plain_logger
        if hasattr(module, "create_markdown_artifact"):
            module.create_markdown_artifact = lambda *args, **kwargs: None
    return ingest_module.ingest_source


def _report_figures(report: Any, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 3),
        "status": report.status,
        "error": report.error,
        "objects_written": report.objects_written,
        "documents": report.documents_seen,
        "stage_seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
    }


def worker(mode: str, folder: Path) -> dict[str, Any]:
    """Ingest `folder` as a new source ("flow", "flow-once" or "plain"); "flow" also re-ingests
    it unchanged and times a bare import of what it wrote."""
    import freshkb.flows.ingest as ingest_module

    ingest = strip_prefect() if mode == "plain" else ingest_module.ingest_source
    started = time.perf_counter()
    first = ingest(source_config=_source_config(folder))
    result: dict[str, Any] = {"first": _report_figures(first, time.perf_counter() - started)}
    if first.status != "completed" or not first.objects_written:
        # A failed ingest is fast and writes nothing: a figure of it would be meaningless.
        raise RuntimeError(f"{mode} ingest of {folder} ended {first.status}: {first.error}")
    if mode == "flow":
        started = time.perf_counter()
        again = ingest(source_config=_source_config(folder))
        result["reingest"] = _report_figures(again, time.perf_counter() - started)
        result["bare_import"] = bare_import()
    return result


def _freshkb_collection(client: Any) -> str:
    """The collection the documents went to: the live one behind freshkb's alias, else the
    largest collection on the server."""
    try:
        from freshkb.core.config import Settings
        from freshkb.core.records import SourceKind
        from freshkb.store.weaviate_store import open_store

        with open_store(Settings()) as store:
            live = store.live_collection(SourceKind.DOCUMENTS)
        if live:
            return live
    except Exception as exc:  # the store's API may move; the fallback still finds the data
        logging.getLogger(__name__).warning("live collection not found (%s); using largest", exc)
    sizes = {
        name: client.collections.get(name).aggregate.over_all(total_count=True).total_count or 0
        for name in client.collections.list_all()
    }
    return max(sizes, key=lambda name: sizes[name])


def bare_import() -> dict[str, Any]:
    """Copy freshkb's documents collection (config, objects, vectors) with a plain batch import."""
    import weaviate

    http, grpc = (
        int(os.environ["FRESHKB_WEAVIATE_HTTP_PORT"]),
        int(os.environ["FRESHKB_WEAVIATE_GRPC_PORT"]),
    )
    with weaviate.connect_to_local(host="127.0.0.1", port=http, grpc_port=grpc) as client:
        name = _freshkb_collection(client)
        source = client.collections.get(name)
        objects = list(source.iterator(include_vector=True))
        config = source.config.get().to_dict()
        config["class"] = BARE_COLLECTION
        client.collections.create_from_dict(config)
        target = client.collections.get(BARE_COLLECTION)
        started = time.perf_counter()
        with target.batch.dynamic() as batch:
            for obj in objects:
                batch.add_object(properties=obj.properties, uuid=obj.uuid, vector=obj.vector)
        seconds = time.perf_counter() - started
        failed = len(target.batch.failed_objects)
        count = target.aggregate.over_all(total_count=True).total_count or 0
    return {
        "collection": name,
        "objects": len(objects),
        "written": count,
        "failed": failed,
        "seconds": round(seconds, 3),
    }


# ---- parent side: starts Weaviate, runs and measures the workers -----------------------------


def copy_files(folder: Path, names: list[str] | None, target: Path, copies: int = 1) -> Path:
    """The folder's PDF/Markdown files (only `names` if given), `copies` times under new names."""
    target.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in {".pdf", ".md"} or (names and path.name not in names):
            continue
        for copy in range(copies):
            suffix = f"-copy{copy}" if copies > 1 else ""
            shutil.copy(path, target / f"{path.stem}{suffix}{path.suffix}")
    return target


def measured_worker(
    mode: str,
    folder: Path,
    work: Path,
    ports: tuple[int, int],
    extra_env: dict[str, str] | None = None,
) -> tuple[Measured, dict[str, Any]]:
    """Run one worker process against a fresh Weaviate; its measurement and its JSON result."""
    with managed_weaviate(work, *ports):
        command = [str(ROOT / ".venv/bin/python"), str(Path(__file__).resolve())]
        command += ["--worker", mode, str(folder)]
        env = dict(os.environ, FRESHKB_CACHE_DIR=str(cold_cache(work))) | (extra_env or {})
        measured = run_measured(command, env=env, cwd=work)
    if measured.returncode != 0:
        raise RuntimeError(
            f"{mode} worker failed (exit {measured.returncode}): " + error_line(measured.stderr)
        )
    line = next(x for x in measured.stdout.splitlines() if x.startswith("STAGE-RESULT "))
    return measured, json.loads(line.removeprefix("STAGE-RESULT "))


def error_line(stderr: str) -> str:
    """The last line of a worker's stderr that names an error, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line or "Exception" in line]
    return (named or lines or ["no output"])[-1]


def _row(
    figure: str, freshkb: float, peer: float, ratio: float, passed: bool, **extra: Any
) -> dict[str, Any]:
    goal = GOALS[figure]
    goal_text = {
        "write": f">= {goal:.0%}",
        "prefect": f"<= {goal:.0%}",
        "reingest": f"<= {goal:.0%}",
        "memory": f"< {goal}x",
    }[figure]
    return {
        "figure": figure,
        "freshkb": round(freshkb, 3),
        "peer": round(peer, 3),
        "ratio": round(ratio, 4),
        "goal": goal_text,
        "pass": passed,
        **extra,
    }


def flow_figures(folder: Path, work: Path, ports: tuple[int, int]) -> tuple[dict[str, Any], ...]:
    """(a) write vs bare import, (c) re-ingest share, and the flow run for (b)."""
    measured, result = measured_worker("flow", folder, work / "flow", ports)
    first, again, bare = result["first"], result["reingest"], result["bare_import"]
    write_s = first["stage_seconds"].get("write", 0.0)
    # Speeds compared as objects per second; the bare import wrote the same objects.
    write_share = (bare["seconds"] / write_s) if write_s else 0.0
    write = _row(
        "write",
        write_s,
        bare["seconds"],
        write_share,
        write_share >= GOALS["write"],
        objects=first["objects_written"],
        bare=bare,
        unit="s",
    )
    share = again["seconds"] / first["seconds"]
    reingest = _row(
        "reingest",
        again["seconds"],
        first["seconds"],
        share,
        share <= GOALS["reingest"] and again["objects_written"] == 0,
        written_on_reingest=again["objects_written"],
        unit="s",
    )
    return write, reingest, {"first": first, "process_s": measured.seconds}


@contextmanager
def prefect_server(work: Path, port: int) -> Iterator[str]:
    """A Prefect server of its own (as `freshkb prefect up` runs one), started before and
    stopped after the runs that use it; yields its API URL."""
    from freshkb.flows.prefect_server import is_healthy

    api_url = f"http://127.0.0.1:{port}/api"
    home = work / "prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [str(ROOT / ".venv/bin/python"), "-m", "prefect", "server", "start"]
    with (home / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not is_healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        yield api_url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def prefect_figure(
    folder: Path, work: Path, ports: tuple[int, int], flow: dict[str, Any]
) -> dict[str, Any]:
    """(b) the same first ingest as plain calls, and as the flow on a running Prefect server
    (how scheduled and deployed runs go), both one batch at a time; overhead as a share of the
    flow's time. The flow of (a), run by a one-off process against Prefect's temporary server
    with the default batches in flight, is reported beside it: its difference is that server's
    start-up less what the overlap of batches saves."""
    _, result = measured_worker("plain", folder, work / "plain", ports)
    plain = result["first"]
    with prefect_server(work, ports[0] + 120) as api_url:
        # One batch at a time, as the plain calls go: two in flight would hide the overhead
        # behind the overlap (2026-12-07: flow 84.7 s, plain 99.0 s).
        env = {"PREFECT_API_URL": api_url, "FRESHKB_INGEST_PARALLEL_BATCHES": "1"}
        _, served = measured_worker("flow-once", folder, work / "served", ports, env)
    flow_s = served["first"]["seconds"]
    overhead = (flow_s - plain["seconds"]) / flow_s
    one_off_s = flow["first"]["seconds"]
    return _row(
        "prefect",
        flow_s,
        plain["seconds"],
        overhead,
        overhead <= GOALS["prefect"],
        one_off_flow_s=one_off_s,
        one_off_overhead=round((one_off_s - plain["seconds"]) / one_off_s, 4),
        plain_stages=plain["stage_seconds"],
        flow_stages=served["first"]["stage_seconds"],
        unit="s",
    )


def memory_figure(names: list[str] | None, work: Path, ports: tuple[int, int]) -> dict[str, Any]:
    """(d) peak memory of the process tree: the corpus once vs ten times."""
    peaks = {}
    for copies in (1, 10):
        folder = copy_files(MANUALS, names, work / f"manuals-x{copies}", copies)
        measured, result = measured_worker("flow-once", folder, work / f"mem-x{copies}", ports)
        peaks[copies] = (measured, result["first"])
    one, ten = peaks[1][0], peaks[10][0]
    ratio = ten.peak_tree_pss_mb / one.peak_tree_pss_mb
    return _row(
        "memory",
        ten.peak_tree_pss_mb,
        one.peak_tree_pss_mb,
        ratio,
        ratio < GOALS["memory"],
        unit="MB PSS",
        rss_mb={"x1": round(one.peak_tree_rss_mb), "x10": round(ten.peak_tree_rss_mb)},
        seconds={"x1": round(one.seconds, 1), "x10": round(ten.seconds, 1)},
        objects={"x1": peaks[1][1]["objects_written"], "x10": peaks[10][1]["objects_written"]},
    )


def run_figures(wanted: set[str], quick: bool, ports: tuple[int, int]) -> list[dict[str, Any]]:
    """Every wanted figure; one that fails becomes a row saying why."""
    work = Path(tempfile.mkdtemp(prefix="freshkb-stage-"))
    rows: list[dict[str, Any]] = []
    try:
        pdfs = copy_files(BENEFITS, QUICK_PDFS if quick else None, work / "pdfs")
        flow: dict[str, Any] | None = None
        if wanted & {"write", "reingest", "prefect"}:
            try:
                write, reingest, flow = flow_figures(pdfs, work, ports)
                rows += [r for r in (write, reingest) if r["figure"] in wanted]
            except Exception as exc:
                rows += [_failed(f, exc) for f in ("write", "reingest", "prefect") if f in wanted]
        if "prefect" in wanted and flow is not None:
            rows.append(_guarded("prefect", lambda: prefect_figure(pdfs, work, ports, flow)))
        if "memory" in wanted:
            names = QUICK_MANUALS if quick else None
            rows.append(_guarded("memory", lambda: memory_figure(names, work, ports)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _guarded(figure: str, compute: Any) -> dict[str, Any]:
    try:
        return compute()
    except Exception as exc:
        return _failed(figure, exc)


def _failed(figure: str, exc: Exception) -> dict[str, Any]:
    return {
        "figure": figure,
        "freshkb": None,
        "peer": None,
        "ratio": None,
        "goal": _row(figure, 0, 0, 0, False)["goal"],
        "pass": False,
        "error": f"{type(exc).__name__}: {exc}"[-2000:],
    }


LABELS = {
    "write": ("write stage s", "bare import s", "bare/freshkb speed"),
    "prefect": ("flow s", "plain calls s", "overhead share"),
    "reingest": ("re-ingest s", "first ingest s", "share of first"),
    "memory": ("x10 peak PSS MB", "x1 peak PSS MB", "x10 / x1"),
}


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per figure: freshkb's side, the reference, the ratio, the goal."""
    print(f"{'figure':<10}{'freshkb':>22}{'reference':>22}{'ratio':>26}{'goal':>9}  pass")
    for r in rows:
        mine, theirs, ratio = LABELS[r["figure"]]
        if r.get("error"):
            print(f"{r['figure']:<10} not run: {r['error'].splitlines()[-1]}")
            continue
        print(
            f"{r['figure']:<10}{r['freshkb']:>12.2f} {mine:<9.9}{r['peer']:>12.2f} "
            f"{theirs:<9.9}{r['ratio']:>10.3f} {ratio:<15.15}{r['goal']:>9}  "
            f"{'pass' if r['pass'] else 'FAIL'}"
        )
    for r in rows:
        if r["figure"] == "prefect" and not r.get("error"):
            print(
                f"one-off CLI flow (temporary Prefect server): {r['one_off_flow_s']:.1f} s, "
                f"overhead {r['one_off_overhead']:.1%}"
            )
            print("flow stages:  " + " ".join(f"{k}={v:.1f}" for k, v in r["flow_stages"].items()))
            print("plain stages: " + " ".join(f"{k}={v:.1f}" for k, v in r["plain_stages"].items()))


def main() -> int:
    """Run the figures (or, with --worker, one measured ingest) and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(FIGURES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["flow", "flow-once", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    add_port_options(parser)
    args = parser.parse_args()
    if args.worker:
        print("STAGE-RESULT " + json.dumps(worker(args.worker, Path(args.folder))), flush=True)
        return 0
    wanted = {f.strip() for f in args.only.split(",")} & set(FIGURES)
    rows = run_figures(wanted, args.quick, (args.http_port, args.grpc_port))
    if args.json:
        print(json.dumps({"quick": args.quick, "rows": rows}))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
