"""One typed settings object, read from the environment and one config file.

Precedence, highest first: keyword arguments, environment variables (FRESHKB_*, plus
WEAVIATE_URL / WEAVIATE_API_KEY as every Weaviate tool names them), the `settings:` block of the
config file, then defaults that run on a laptop with nothing else installed.

The same file declares the sources under `sources:`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from freshkb.core.errors import ConfigError

DEFAULT_CONFIG_FILE = "freshkb.yaml"
TOKEN_CUSTOMER = re.compile(r"^customer:(?P<customer_id>\S{1,128})$")
# `upload` (every documents source) or `upload:a,b` (those sources only).
_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
TOKEN_UPLOAD = re.compile(rf"^upload(:(?P<sources>{_NAME}(,{_NAME})*))?$")
WEAVIATE_VERSION = "1.39.3"
# Set (to "1") while a one-off command's flow runs go to the temporary Prefect server it
# started (cli/temporary_prefect.py): no one deployed there, so no concurrency limits exist.
TEMPORARY_PREFECT_MARKER = "FRESHKB_TEMPORARY_PREFECT"


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
    # scale-out (issue 14): shared state, a replicated Weaviate, batches run by a task runner
    cache_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the vector and verdict caches shared by every worker "
        "(PostgreSQL); default: SQLite files (embedding-cache.sqlite3 in the data directory, "
        "screening/document-verdicts.sqlite3 in the cache directory)",
    )
    weaviate_nodes: int = Field(
        default=1, ge=1, description="nodes of the locally managed Weaviate (`weaviate up`)"
    )
    weaviate_replication_factor: int = Field(
        default=1, ge=1, description="copies of each collection's objects; 3 on a 3-node cluster"
    )
    weaviate_write_consistency: Literal["ONE", "QUORUM", "ALL"] = "QUORUM"
    weaviate_read_consistency: Literal["ONE", "QUORUM", "ALL"] = "ONE"
    weaviate_settle_seconds: float = Field(
        default=35.0,
        ge=0,
        description="on a replicated index, how long the post-write check reads the count "
        "again before a mismatch fails the run (a replica may apply a write late; async "
        "replication compares copies every 30 s)",
    )
    ingest_task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="what runs an ingest's batches at once: threads in the flow's process, or "
        "the Dask cluster at ingest_dask_address (prefect-dask)",
    )
    ingest_dask_address: str | None = Field(
        default=None, description="scheduler of an existing Dask cluster, tcp://host:8786"
    )
    ingest_parallel_batches: int = Field(
        default=2, ge=1, description="batches of one source chunked, embedded and written at once"
    )

    # answer service: an OpenAI-compatible chat completions endpoint (vLLM in production)
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str = "smollm2-135m-instruct"
    llm_api_key: SecretStr | None = None
    llm_timeout: float = Field(default=20.0, gt=0, description="seconds per completion")
    llm_max_tokens: int = Field(default=256, ge=16)
    llm_breaker_failures: int = Field(default=3, ge=1, description="failures that open it")
    llm_breaker_cooldown: float = Field(default=30.0, ge=0, description="seconds it stays open")
    search_alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="hybrid search weight of the vector score against BM25's (0: keywords only, "
        "1: vectors only)",
    )
    answer_min_relevance: float = Field(
        default=0.35, ge=-1, le=1, description="cosine of the best passage below which we escalate"
    )
    # declining (issue 11 section 2): serving/answerability.py
    answer_min_answerability: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="probability that the passages answer the question (the fitted model in "
        "serving/data/answerability.json) below which it is declined; None: the model declines "
        "nothing, only answer_min_relevance and the no-key-word rule do",
    )
    api_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="bearer token -> scope: 'answer' (a service acting for any customer it "
        "names), 'customer:<id>' (that one customer only), 'upload' or 'upload:<source>,...' "
        "(documents into those sources), or 'admin' (also escalations)",
    )
    api_max_body_bytes: int = Field(default=16_384, ge=1024)
    upload_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest document one upload may carry"
    )
    # back-pressure per worker process: serving/admission.py, README "Sizing the back-pressure"
    answer_concurrency: int = Field(default=8, ge=1, description="answers computed at once")
    answer_queue: int = Field(default=32, ge=0, description="answers waiting; beyond: 429")
    answer_queue_seconds: float = Field(default=10.0, gt=0, description="wait; beyond: 503")
    llm_concurrency: int = Field(default=2, ge=1, description="LLM calls in flight at once")
    llm_queue_seconds: float = Field(
        default=5.0, ge=0, description="wait for an LLM slot; beyond: a quoted answer"
    )
    # query path under load (issue 13): serving/answerer.py answer_deadline
    answer_budget_seconds: float = Field(
        default=8.0,
        gt=0,
        description="an answer's time from arrival; the LLM is skipped (quoted answer) or cut "
        "off where it would run past it: keep it under slo.yaml's p95",
    )

    prompt_version: str = Field(
        default="answer-v1", description="system prompt: serving/data/prompts/<version>.txt"
    )
    # monitoring: the answer log (serving/answer_log.py), cost, and the SLO file
    answer_log_questions: Literal["text", "hash"] = Field(
        default="text", description="keep each question's text in the answer log, or its hash"
    )
    answer_log_retention_days: int = Field(default=90, ge=1)
    answer_log_hash_key: SecretStr | None = Field(
        default=None,
        description="key of the log's question and customer digests; default: made on first "
        "use in the data directory (set the same one on every replica)",
    )
    llm_price_prompt_per_1k: float = Field(
        default=0.0, ge=0, description="USD per 1000 prompt tokens (hosted API price)"
    )
    llm_price_completion_per_1k: float = Field(default=0.0, ge=0, description="USD per 1000")
    llm_gpu_hour_usd: float = Field(
        default=0.0, ge=0, description="self-hosted: USD per GPU hour of the LLM server"
    )
    slo_file: Path | None = Field(
        default=None, description="the SLO targets; default slo.yaml beside the config file"
    )

    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_device: str = "auto"
    embedding_batch_size: int = Field(default=64, ge=1)
    chunk_max_chars: int = Field(default=0, ge=0, description="0: derive from the model window")
    # embedding speed (issue 13): embeddings/embedder.py select_embedder
    embedding_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        default="auto",
        description="auto: as the index's vectors were made; a new index in int8 on a CPU "
        "(ONNX Runtime, exported once into the cache dir), fp32 on a GPU; others force one",
    )
    # ingest streaming (issue 13): flows/ingest.py writes a source in batches of documents, and
    # the documents loader partitions PDFs and DOCX files in a pool of processes
    ingest_batch_documents: int = Field(
        default=32, ge=1, description="documents chunked, screened, embedded and written at once"
    )
    # 1 until a pool is measured to win here (see bench/rss_bench.py and issue 13's report)
    partition_processes: int = Field(
        default=1, ge=1, description="processes partitioning PDF and DOCX files; 1: in-process"
    )

    @field_validator("api_tokens")
    @classmethod
    def _token_scopes(cls, value: dict[str, str]) -> dict[str, str]:
        for scope in value.values():
            if scope in ("answer", "admin") or TOKEN_CUSTOMER.match(scope):
                continue
            if not TOKEN_UPLOAD.match(scope):
                raise ValueError(
                    f"token scope {scope!r}: use 'answer', 'admin', 'customer:<customer id>', "
                    "'upload' or 'upload:<source>,<source>'"
                )
        return value

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
        if path.is_file() and "settings" in (read_config_file(path) or {}):
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
    def slo_path(self) -> Path:
        """The SLO targets file: slo_file, else slo.yaml beside the config file."""
        return self.slo_file or self.config_file.parent / "slo.yaml"

    @property
    def validation_results_dir(self) -> Path:
        """Great Expectations results, one JSON file per run."""
        return self.data_dir / "validation"

    @property
    def embedding_cache_path(self) -> Path:
        """SQLite file caching vectors by (chunk hash, model id)."""
        return self.data_dir / "embedding-cache.sqlite3"


def read_config_file(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax and rerun") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `sources:` at the top level")
    return data
