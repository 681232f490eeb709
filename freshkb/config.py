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

from freshkb.errors import ConfigError
from freshkb.records import SourceKind

DEFAULT_CONFIG_FILE = "freshkb.yaml"
WEAVIATE_VERSION = "1.39.3"
SQL_URL = re.compile(r"^[a-z][a-z0-9+]*://")


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "freshkb"


def config_file_path() -> Path:
    """The config file in use: $FRESHKB_CONFIG, else ./freshkb.yaml."""
    return Path(os.environ.get("FRESHKB_CONFIG", DEFAULT_CONFIG_FILE))


class Settings(BaseSettings):
    """Runtime settings of freshkb (see README, 'Configuration')."""

    model_config = SettingsConfigDict(env_prefix="FRESHKB_", extra="ignore")

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
        """Add the `settings:` block of the config file below the environment."""
        path = config_file_path()
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
    def embedding_cache_path(self) -> Path:
        """SQLite file caching vectors by (chunk hash, model id)."""
        return self.data_dir / "embedding-cache.sqlite3"


class FileOptions(BaseModel):
    """How to read the records of the customer files that match one glob."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str | None = None
    key: str | None = None
    title: str | None = None


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
                )
        return FileOptions(customer_id=self.customer_id, key=self.key)

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
