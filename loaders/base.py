"""What every loader offers, and how files in a source folder are listed and loaded."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import Protocol

from freshkb.core.errors import DataError, TransientError, UnsupportedFileType
from freshkb.core.records import LoadedDocument, LoadFailure, LoadResult
from freshkb.core.sources import FolderSourceConfig, SourceConfig

ProgressCallback = Callable[[int, int, str], None]  # (done, total, item)


class Loader(Protocol):
    """Pulls one source: `precheck()` fails fast, `load()` returns records and failures."""

    @property
    def source(self) -> SourceConfig:
        """The declared source this loader reads."""
        ...

    def precheck(self) -> None:
        """Raise ConfigError or TransientError if the source cannot be read at all."""
        ...

    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Every document or record of the source; a bad item becomes a LoadFailure."""
        ...


def check_folder(source: FolderSourceConfig) -> Path:
    """The source's folder or file, or a TransientError saying it is not there."""
    location = Path(source.location)
    if not location.exists():
        raise TransientError(
            f"source {source.name!r}: {location} does not exist; mount or create it, or fix "
            "`location` in the sources config"
        )
    return location


def list_files(source: FolderSourceConfig) -> Iterator[tuple[Path, str]]:
    """(path, path relative to the source) of every file the source includes, sorted.

    Hidden files and folders (".git", ".DS_Store") are skipped silently.
    """
    root = Path(source.location)
    if root.is_file():
        yield root, root.name
        return
    for path in visible_files(root):
        relative = path.relative_to(root).as_posix()
        if any(_matches(relative, pattern) for pattern in source.include):
            yield path, relative


def visible_files(root: Path) -> Iterator[Path]:
    """Every file under the folder `root`, sorted, hidden files and folders skipped."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts):
            yield path


def _matches(relative: str, pattern: str) -> bool:
    if fnmatch(relative, pattern):
        return True
    # "**/*.md" should also take top-level files, as in most glob tools.
    return pattern.startswith("**/") and fnmatch(relative, pattern[3:])


def modified_time(path: Path) -> datetime:
    """A file's modification time as an aware UTC datetime."""
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)


@dataclass(frozen=True)
class PooledFiles:
    """Which files a pool of worker processes loads, and how."""

    wants: Callable[[Path, str], bool]  # (path, relative): load this file in a worker
    # sent to the workers with every file: a module function or a small, picklable object's method
    load_file: Callable[[Path, str], LoadResult]
    processes: int


def load_each_file(
    source: FolderSourceConfig,
    load_file: Callable[[Path, str], LoadResult],
    progress: ProgressCallback | None,
    pooled: PooledFiles | None = None,
) -> LoadResult:
    """Run `load_file` on every included file; a file that raises becomes one LoadFailure.

    The files `pooled` wants go to its worker processes while this process loads the others;
    the result keeps the files' order either way.
    """
    files = list(list_files(source))
    heavy = [(p, relative) for p, relative in files if pooled and pooled.wants(p, relative)]
    processes = pooled.processes if pooled else 1
    documents: list[LoadedDocument] = []
    failures: list[LoadFailure] = []
    with worker_pool(processes, len(heavy)) as pool:
        futures: dict[str, Future[LoadResult]] = {}
        if pool is not None and pooled is not None:
            for path, relative in heavy:
                futures[relative] = pool.submit(
                    load_one_file, source, pooled.load_file, path, relative
                )
        for done, (path, relative) in enumerate(files, 1):
            future = futures.get(relative)
            result = (
                _pooled_result(source, relative, future)
                if future is not None
                else load_one_file(source, load_file, path, relative)
            )
            documents.extend(result.documents)
            failures.extend(result.failures)
            if progress:
                progress(done, len(files), relative)
    return LoadResult(tuple(documents), tuple(failures))


def load_one_file(
    source: FolderSourceConfig,
    load_file: Callable[[Path, str], LoadResult],
    path: Path,
    relative: str,
) -> LoadResult:
    """`load_file` on one file; whatever it raises becomes the file's one LoadFailure.

    One bad file never stops the source: a DataError carries its own reason, anything else is
    reported with its type so the run report still names the file.
    """
    try:
        return load_file(path, relative)
    except UnsupportedFileType as exc:
        failure = LoadFailure(source.name, relative, str(exc), unsupported=True)
    except DataError as exc:
        failure = LoadFailure(source.name, relative, str(exc))
    except Exception as exc:
        reason = f"could not be read ({type(exc).__name__}: {exc})"
        failure = LoadFailure(source.name, relative, reason)
    return LoadResult((), (failure,))


def _pooled_result(
    source: FolderSourceConfig, relative: str, future: Future[LoadResult]
) -> LoadResult:
    """A worker's result; a worker that died (killed, out of memory) fails only its files."""
    try:
        return future.result()
    except Exception as exc:
        reason = f"could not be read (its worker process failed: {type(exc).__name__}: {exc})"
        return LoadResult((), (LoadFailure(source.name, relative, reason),))


def _start_worker() -> None:
    """Each partition worker uses the offline spaCy model, as the ingest process does."""
    from freshkb.loaders.nlp_model import install_offline_spacy_model

    install_offline_spacy_model()


@contextmanager
def worker_pool(processes: int, jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of up to `processes` workers for `jobs` files, or None when one process is as
    good (fewer than two jobs or processes: starting a worker costs seconds of imports).

    Workers are spawned, not forked: the ingest process runs Prefect's threads and torch's
    thread pool, which a fork would copy half-made.
    """
    if processes < 2 or jobs < 2:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(processes, jobs), mp_context=context, initializer=_start_worker
    ) as pool:
        yield pool
