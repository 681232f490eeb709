"""What every loader offers, and how files in a source folder are listed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if not path.is_file():
            continue
        if any(_matches(relative, pattern) for pattern in source.include):
            yield path, relative


def _matches(relative: str, pattern: str) -> bool:
    if fnmatch(relative, pattern):
        return True
    # "**/*.md" should also take top-level files, as in most glob tools.
    return pattern.startswith("**/") and fnmatch(relative, pattern[3:])


def modified_time(path: Path) -> datetime:
    """A file's modification time as an aware UTC datetime."""
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)


def load_each_file(
    source: FolderSourceConfig,
    load_file: Callable[[Path, str], LoadResult],
    progress: ProgressCallback | None,
) -> LoadResult:
    """Run `load_file` on every included file; a file that raises becomes one LoadFailure.

    One bad file never stops the source: a DataError carries its own reason, anything else is
    reported with its type so the run report still names the file.
    """
    files = list(list_files(source))
    documents: list[LoadedDocument] = []
    failures: list[LoadFailure] = []
    for done, (path, relative) in enumerate(files, 1):
        try:
            result = load_file(path, relative)
            documents.extend(result.documents)
            failures.extend(result.failures)
        except UnsupportedFileType as exc:
            failures.append(LoadFailure(source.name, relative, str(exc), unsupported=True))
        except DataError as exc:
            failures.append(LoadFailure(source.name, relative, str(exc)))
        except Exception as exc:
            reason = f"could not be read ({type(exc).__name__}: {exc})"
            failures.append(LoadFailure(source.name, relative, reason))
        if progress:
            progress(done, len(files), relative)
    return LoadResult(tuple(documents), tuple(failures))
