"""One typed settings object, read from the environment and one config file.

Precedence, highest first: keyword arguments, environment variables (FRESHKB_*, plus
WEAVIATE_URL / WEAVIATE_API_KEY as every Weaviate tool names them), the `settings:` block of the
config file, then defaults that run on a laptop with nothing else installed.

The same file declares the sources under `sources:`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from freshkb.core.errors import ConfigError
from freshkb.core.records import SourceKind

DEFAULT_CONFIG_FILE = "freshkb.yaml"
WEAVIATE_VERSION = "1.39.3"
SQL_URL = re.compile(r"^[a-z][a-z0-9+]*://")
_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration such as 90, "90s", "15m", "24h", "7d" or "2w"."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; write it as 90s, 15m, 24h, 7d or 2w")
    return float(match["number"]) * _UNIT_SECONDS[match["unit"] or "s"]


def format_duration(seconds: float) -> str:
    """A short human form of a duration: 45s, 12m, 5h, 3d 4h."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}".removesuffix(".0") + "h"
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f}d {rest / 3600:.0f}h"


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "freshkb"


def config_file_path() -> Path:
    """The config file in use: $FRESHKB_CONFIG, else ./freshkb.yaml."""
    return Path(os.environ.get("FRESHKB_CONFIG", DEFAULT_CONFIG_FILE))


class Settings(BaseSettings):
    """Runtime settings of freshkb (see README, 'Configuration')."""

    model_config = SettingsConfigDict(env_prefix="FRESHKB_", extra="ignore")

    config_file: Path = Field(
        default_factory=config_file_path, description="sources and settings file"
    )

    data_dir: Path = Field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share"))
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))

    weaviate_url: str | None = Field(
        default=None, validation_alias=AliasChoices("WEAVIATE_URL", "FRESHKB_WEAVIATE_URL")
    )
    weaviate_grpc_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("WEAVIATE_GRPC_URL", "FRESHKB_WEAVIATE_GRPC_URL"),
    )
    weaviate_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("WEAVIATE_API_KEY", "FRESHKB_WEAVIATE_API_KEY"),
    )
    weaviate_http_port: int = 8080
    weaviate_grpc_port: int = 50051
    weaviate_version: str = WEAVIATE_VERSION
    weaviate_binary: Path | None = None
    weaviate_startup_timeout: float = 90.0

    ledger_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the freshness ledger; default SQLite"
    )

    # answer service: an OpenAI-compatible chat completions endpoint (vLLM in production)
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str = "smollm2-135m-instruct"
    llm_api_key: SecretStr | None = None
    llm_timeout: float = Field(default=20.0, gt=0, description="seconds per completion")
    llm_max_tokens: int = Field(default=256, ge=16)
    llm_breaker_failures: int = Field(default=3, ge=1, description="failures that open it")
    llm_breaker_cooldown: float = Field(default=30.0, ge=0, description="seconds it stays open")
    answer_min_relevance: float = Field(
        default=0.35, ge=-1, le=1, description="cosine of the best passage below which we escalate"
    )
    api_tokens: dict[str, Literal["answer", "admin"]] = Field(
        default_factory=dict, description="bearer token -> scope; admin may also answer"
    )
    api_max_body_bytes: int = Field(default=16_384, ge=1024)

    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_device: str = "auto"
    embedding_batch_size: int = Field(default=64, ge=1)
    chunk_max_chars: int = Field(default=0, ge=0, description="0: derive from the model window")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the `settings:` block of the config file below the environment.

        The file is the one passed as `Settings(config_file=...)`, else $FRESHKB_CONFIG, else
        ./freshkb.yaml.
        """
        given = getattr(init_settings, "init_kwargs", {}).get("config_file")
        path = Path(given) if given else config_file_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file() and "settings" in (_read_yaml(path) or {}):
            sources.append(
                YamlConfigSettingsSource(
                    settings_cls, yaml_file=path, yaml_config_section="settings"
                )
            )
        return tuple(sources)

    @property
    def weaviate_data_dir(self) -> Path:
        """Persistent data directory of the locally managed Weaviate."""
        return self.data_dir / "weaviate" / f"{self.weaviate_http_port}"

    @property
    def ledger_database_url(self) -> str:
        """Where the freshness ledger lives: ledger_url, else SQLite in the data directory."""
        return self.ledger_url or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    @property
    def validation_results_dir(self) -> Path:
        """Great Expectations results, one JSON file per run."""
        return self.data_dir / "validation"

    @property
    def embedding_cache_path(self) -> Path:
        """SQLite file caching vectors by (chunk hash, model id)."""
        return self.data_dir / "embedding-cache.sqlite3"


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
    """One source as declared in the config file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: SourceKind
    location: str
    owner: str = "unassigned"
    description: str = ""
    # documents
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    pdf_strategy: Literal["fast", "hi_res", "ocr_only", "auto"] = "fast"
    # customers: the default id fields, then per-file overrides keyed by glob
    customer_id: str | None = None
    key: str | None = None
    files: dict[str, FileOptions] = Field(default_factory=dict)
    table: str | None = None
    query: str | None = None
    # validation
    freshness: FreshnessConfig = Field(default_factory=FreshnessConfig)
    expectations: Expectations = Field(default_factory=Expectations)

    @field_validator("files")
    @classmethod
    def _globs_not_empty(cls, value: dict[str, FileOptions]) -> dict[str, FileOptions]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("file globs must not be empty")
        return value

    @model_validator(mode="after")
    def _customer_sources_name_their_id(self) -> SourceConfig:
        if self.kind is SourceKind.CUSTOMERS:
            if not self.customer_id and not self.files:
                raise ValueError(
                    "a customers source needs `customer_id` (the field holding the customer id) "
                    "or per-file `files:` options"
                )
            if self.is_sql and not (self.table or self.query):
                raise ValueError("a SQL source needs `table` or `query`")
        return self

    @property
    def is_sql(self) -> bool:
        """True when the location is a SQLAlchemy URL rather than a path."""
        return bool(SQL_URL.match(self.location))

    def file_options(self, relative_path: str) -> FileOptions:
        """Options for one file: the first matching glob in `files`, else the source defaults."""
        for pattern, options in self.files.items():
            if fnmatch.fnmatch(relative_path, pattern) or fnmatch.fnmatch(
                Path(relative_path).name, pattern
            ):
                return FileOptions(
                    customer_id=options.customer_id or self.customer_id,
                    key=options.key or self.key,
                    title=options.title,
                    expectations=options.expectations,
                )
        return FileOptions(customer_id=self.customer_id, key=self.key)

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

    def resolved(self, base: Path) -> SourceConfig:
        """A copy whose relative folder location is resolved against `base`."""
        if self.is_sql or Path(self.location).is_absolute():
            return self
        return self.model_copy(update={"location": str((base / self.location).resolve())})


class SourcesFile(BaseModel):
    """The `sources:` list of the config file."""

    model_config = ConfigDict(extra="ignore")

    sources: list[SourceConfig] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        names = [source.name for source in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {', '.join(duplicates)}")
        return value


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax and rerun") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `sources:` at the top level")
    return data


def load_sources(path: Path | None = None) -> list[SourceConfig]:
    """Read and validate the sources of the config file, locations resolved to absolute paths."""
    path = path or config_file_path()
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found; create it (see README, 'Configuration') or set "
            "FRESHKB_CONFIG to its path"
        )
    data = _read_yaml(path) or {}
    try:
        parsed = SourcesFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid sources config:\n{exc}") from exc
    return [source.resolved(path.parent.resolve()) for source in parsed.sources]


def get_source(name: str, path: Path | None = None) -> SourceConfig:
    """The declared source called `name`, or a ConfigError listing the known names."""
    sources = load_sources(path)
    for source in sources:
        if source.name == name:
            return source
    known = ", ".join(source.name for source in sources) or "none"
    raise ConfigError(f"no source named {name!r} in {path or config_file_path()} (known: {known})")
