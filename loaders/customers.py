"""Loaders of customer records: from files in a folder, or from a SQL table or query."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import LoadResult
from freshkb.core.sources import CustomerFilesSourceConfig, CustomerSqlSourceConfig
from freshkb.loaders.base import ProgressCallback, check_folder, load_each_file, modified_time
from freshkb.loaders.customer_records import records_to_documents
from freshkb.loaders.record_files import plain_values, read_records


class CustomerFilesLoader:
    """Loads every record of the customer files in a folder as one document each."""

    def __init__(self, source: CustomerFilesSourceConfig):
        self.source = source

    def precheck(self) -> None:
        """The folder (or file) must exist."""
        check_folder(self.source)

    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Every record; a bad file or record becomes a LoadFailure."""
        return load_each_file(
            self.source,
            lambda path, relative: records_to_documents(
                self.source.name,
                relative,
                read_records(path),
                self.source.file_options(relative),
                modified_time(path),
            ),
            progress,
        )


class CustomerSqlLoader:
    """Loads the rows of a SQL table or query as one document each."""

    def __init__(self, source: CustomerSqlSourceConfig):
        self.source = source

    def precheck(self) -> None:
        """The database must answer."""
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.source.location)
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.ArgumentError as exc:
            raise ConfigError(f"source {self.source.name!r}: bad SQLAlchemy URL: {exc}") from exc
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"source {self.source.name!r}: the database driver {exc.name!r} for "
                f"{_masked(self.source.location)} is not installed; pip install it"
            ) from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise TransientError(
                f"source {self.source.name!r}: cannot connect to {_masked(self.source.location)}"
                f" ({type(exc).__name__}); check the server and the URL"
            ) from exc

    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Every row; a bad row becomes a LoadFailure."""
        label = self.source.table or "query"
        result = records_to_documents(
            self.source.name,
            label,
            self._rows(),
            self.source.file_options(label),
            datetime.now(UTC),
        )
        if progress:
            progress(1, 1, label)
        return result

    def _rows(self) -> list[dict[str, Any]]:
        import pandas as pd
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.source.location)
        statement = self.source.query or f'SELECT * FROM "{self.source.table}"'
        try:
            with engine.connect() as connection:
                frame = pd.read_sql(sqlalchemy.text(statement), connection)
        except sqlalchemy.exc.DBAPIError as exc:
            raise ConfigError(
                f"source {self.source.name!r}: SQL failed on {_masked(self.source.location)}: "
                f"{exc.orig}; check `table`/`query`"
            ) from exc
        return [plain_values(row) for row in frame.to_dict(orient="records")]


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
