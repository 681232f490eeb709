"""The sources a config file declares, as typed models: a folder of policy documents, customer
record files, or a customer table/query in a SQL database. Each step takes the model of the
kind it reads; `parse_source` picks the model from `kind` and `location`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from freshkb.core.config import config_file_path, read_config_file
from freshkb.core.durations import parse_duration
from freshkb.core.errors import ConfigError
from freshkb.core.records import SourceKind

SQL_URL = re.compile(r"^[a-z][a-z0-9+]*://")
# Five cron fields of digits, names and * , - / (Prefect checks the full syntax at deploy time).
CRON = re.compile(r"^\s*[\w*,/?-]+(\s+[\w*,/?-]+){4}\s*$")
# A schedule derived from a freshness SLA never runs more often than this: each run starts a
# process and loads the embedding model, and Prefect queues runs that cannot keep up.
SCHEDULE_FLOOR_SECONDS = 300.0


Duration = str | float


class FreshnessConfig(BaseModel):
    """What "fresh" means for a source."""

    model_config = ConfigDict(extra="forbid")

    max_age: Duration = Field(
        default="24h", description="maximum age of the last successful validated sync"
    )
    record_max_age: Duration | None = Field(
        default=None, description="customers: maximum age of the newest record's update time"
    )
    record_time_field: str | None = Field(
        default=None, description="field holding a record's update time (default: auto-detect)"
    )

    @field_validator("max_age", "record_max_age")
    @classmethod
    def _is_duration(cls, value: Duration | None) -> Duration | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def max_age_seconds(self) -> float:
        """The sync SLA in seconds."""
        return parse_duration(self.max_age)

    @property
    def record_max_age_seconds(self) -> float | None:
        """The record-age SLA in seconds, if set."""
        return None if self.record_max_age is None else parse_duration(self.record_max_age)


class SourceSchedule(BaseModel):
    """When a source's deployment runs: a cron line (UTC) or an interval in seconds."""

    model_config = ConfigDict(frozen=True)

    cron: str | None = None
    interval_seconds: float | None = None


NAMED_FORMATS = {
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "date": r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$",
}


class RecordExpectations(BaseModel):
    """Column-level expectations on customer records (for a whole source, or per file)."""

    model_config = ConfigDict(extra="forbid")

    required: list[str] = Field(default_factory=list, description="fields that must not be null")
    unique: list[str] = Field(default_factory=list, description="fields whose values are unique")
    formats: dict[str, str] = Field(
        default_factory=dict,
        description="field -> 'email', 'date', or a regular expression its values must match",
    )

    @field_validator("formats")
    @classmethod
    def _formats_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for field_name, pattern in value.items():
            if pattern in NAMED_FORMATS:
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"format of {field_name!r} is not a valid regex: {exc}") from exc
        return value


class Expectations(RecordExpectations):
    """Completeness expectations of a source, checked by Great Expectations before any write."""

    min_documents: int = Field(default=1, ge=0)
    max_documents: int | None = Field(default=None, ge=1)
    max_failed_share: float = Field(
        default=0.25, ge=0, le=1, description="share of files/records that may fail to load"
    )
    max_delete_share: float = Field(
        default=0.3, ge=0, le=1, description="share of live documents one run may delete"
    )


class FileOptions(BaseModel):
    """How to read the records of the customer files that match one glob."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str | None = None
    key: str | None = None
    title: str | None = None
    expectations: RecordExpectations | None = None


class SourceConfig(BaseModel):
    """What every declared source has, whatever it holds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: SourceKind
    location: str
    owner: str = "unassigned"
    description: str = ""
    freshness: FreshnessConfig = Field(default_factory=FreshnessConfig)
    expectations: Expectations = Field(default_factory=Expectations)
    schedule: Duration | None = Field(
        default=None,
        description="when its deployment runs: a cron line in UTC ('*/15 * * * *') or an "
        "interval ('15m'); default half the freshness max_age, at least 5 minutes",
    )

    @field_validator("schedule")
    @classmethod
    def _is_cron_or_interval(cls, value: Duration | None) -> Duration | None:
        if value is None or (isinstance(value, str) and CRON.match(value)):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ValueError(
                f"schedule {value!r} is neither a cron line ('*/15 * * * *') nor an interval "
                "('15m')"
            ) from None
        if seconds <= 0:
            raise ValueError("a schedule interval must be longer than 0s")
        return value

    @property
    def run_schedule(self) -> SourceSchedule:
        """Its schedule as configured, else half its freshness SLA (never under 5 minutes)."""
        if isinstance(self.schedule, str) and CRON.match(self.schedule):
            return SourceSchedule(cron=" ".join(self.schedule.split()))
        if self.schedule is not None:
            return SourceSchedule(interval_seconds=parse_duration(self.schedule))
        half_sla = self.freshness.max_age_seconds / 2
        return SourceSchedule(interval_seconds=max(half_sla, SCHEDULE_FLOOR_SECONDS))

    @property
    def is_sql(self) -> bool:
        """True when the location is a SQLAlchemy URL rather than a path."""
        return bool(SQL_URL.match(self.location))

    def resolved(self, base: Path) -> Self:
        """A copy whose relative folder location is resolved against `base`."""
        if self.is_sql or Path(self.location).is_absolute():
            return self
        return self.model_copy(update={"location": str((base / self.location).resolve())})


class FolderSourceConfig(SourceConfig):
    """A source read from the files of a folder (or one file)."""

    include: list[str] = Field(default_factory=lambda: ["**/*"])


class DocumentSourceConfig(FolderSourceConfig):
    """A folder of policy documents (PDF, DOCX, HTML, Markdown, text, JSON articles)."""

    kind: Literal[SourceKind.DOCUMENTS] = SourceKind.DOCUMENTS
    pdf_strategy: Literal["fast", "hi_res", "ocr_only", "auto"] = "fast"


class CustomerSourceConfig(SourceConfig):
    """Records that each belong to one customer, named by a field of the record."""

    kind: Literal[SourceKind.CUSTOMERS] = SourceKind.CUSTOMERS
    customer_id: str | None = None
    key: str | None = None

    def file_options(self, relative_path: str) -> FileOptions:
        """How to read the records of one file (or of the table): the source's defaults."""
        return FileOptions(customer_id=self.customer_id, key=self.key)

    def file_group(self, relative_path: str) -> str:
        """The `files:` glob a customer file falls under, or "*" for the source defaults."""
        return "*"

    def record_expectations(self, group: str) -> RecordExpectations:
        """Column expectations of one file group: the source's."""
        return self.expectations


class CustomerFilesSourceConfig(FolderSourceConfig, CustomerSourceConfig):
    """Customer records in CSV, JSON, JSON lines or Parquet files, with per-file options."""

    files: dict[str, FileOptions] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _globs_not_empty(cls, value: dict[str, FileOptions]) -> dict[str, FileOptions]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("file globs must not be empty")
        return value

    @model_validator(mode="after")
    def _names_the_customer_field(self) -> CustomerFilesSourceConfig:
        if not self.customer_id and not self.files:
            raise ValueError(
                "a customers source needs `customer_id` (the field holding the customer id) "
                "or per-file `files:` options"
            )
        return self

    def file_options(self, relative_path: str) -> FileOptions:
        """Options for one file: the first matching glob in `files`, else the source defaults."""
        pattern = self.file_group(relative_path)
        options = self.files.get(pattern)
        if options is None:
            return super().file_options(relative_path)
        return FileOptions(
            customer_id=options.customer_id or self.customer_id,
            key=options.key or self.key,
            title=options.title,
            expectations=options.expectations,
        )

    def file_group(self, relative_path: str) -> str:
        """The `files:` glob a customer file falls under, or "*" for the source defaults."""
        for pattern in self.files:
            if fnmatch.fnmatch(relative_path, pattern) or fnmatch.fnmatch(
                Path(relative_path).name, pattern
            ):
                return pattern
        return "*"

    def record_expectations(self, group: str) -> RecordExpectations:
        """Column expectations of one file group: its own, else the source's."""
        options = self.files.get(group)
        if options is not None and options.expectations is not None:
            return options.expectations
        return self.expectations


class CustomerSqlSourceConfig(CustomerSourceConfig):
    """Customer records from a table or query of a SQL database (a SQLAlchemy URL)."""

    customer_id: str
    table: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _names_table_or_query(self) -> CustomerSqlSourceConfig:
        if not (self.table or self.query):
            raise ValueError("a SQL source needs `table` or `query`")
        return self


AnySource = DocumentSourceConfig | CustomerFilesSourceConfig | CustomerSqlSourceConfig


def _source_tag(value: Any) -> str:
    """Which model a declared source is read with: by its kind, and for customers its location."""
    if isinstance(value, SourceConfig):
        data: Mapping[str, Any] = value.model_dump()
    else:
        data = value if isinstance(value, Mapping) else {}
    kind = str(data.get("kind", ""))
    if kind != SourceKind.CUSTOMERS.value:
        return "documents" if kind == SourceKind.DOCUMENTS.value else kind or "documents"
    return "customer-sql" if SQL_URL.match(str(data.get("location", ""))) else "customer-files"


DeclaredSource = Annotated[
    Annotated[DocumentSourceConfig, Tag("documents")]
    | Annotated[CustomerFilesSourceConfig, Tag("customer-files")]
    | Annotated[CustomerSqlSourceConfig, Tag("customer-sql")],
    Discriminator(
        _source_tag,
        custom_error_type="invalid_kind",
        custom_error_message="`kind` must be `documents` or `customers`",
    ),
]
_SOURCE = TypeAdapter(DeclaredSource)


def parse_source(data: Mapping[str, Any] | SourceConfig) -> AnySource:
    """The typed model of one declared source (pydantic's ValidationError when it is wrong)."""
    if isinstance(data, SourceConfig):
        data = data.model_dump(mode="json")
    return _SOURCE.validate_python(data)


class SourcesFile(BaseModel):
    """The `sources:` list of the config file."""

    model_config = ConfigDict(extra="ignore")

    sources: list[DeclaredSource] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[AnySource]) -> list[AnySource]:
        names = [source.name for source in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {', '.join(duplicates)}")
        return value


def load_sources(path: Path | None = None) -> list[AnySource]:
    """Read and validate the sources of the config file, locations resolved to absolute paths."""
    path = path or config_file_path()
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found; create it (see README, 'Configuration') or set "
            "FRESHKB_CONFIG to its path"
        )
    data = read_config_file(path) or {}
    try:
        parsed = SourcesFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid sources config:\n{exc}") from exc
    base = path.parent.resolve()
    return [source.resolved(base) for source in parsed.sources]


def get_source(name: str, path: Path | None = None) -> AnySource:
    """The declared source called `name`, or a ConfigError listing the known names."""
    sources = load_sources(path)
    for source in sources:
        if source.name == name:
            return source
    known = ", ".join(source.name for source in sources) or "none"
    raise ConfigError(f"no source named {name!r} in {path or config_file_path()} (known: {known})")
