"""The one way freshkb runs a local server of its own (Weaviate, the test LLM server).

A managed process runs in its own session with its output appended to a log file, and is found
again, by any later freshkb command, through its pid file. Stopping it asks politely (SIGTERM,
or the signal the server listens for), waits, then insists (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from freshkb.core.errors import TransientError


@dataclass(frozen=True)
class ManagedProcess:
    """A server process known by its pid file and its log file."""

    pid_file: Path
    log_file: Path
    # Part of its command line: a pid file can outlive its server (SIGKILL, reboot) and the pid
    # be reused, so with a signature a pid counts only when that process is really ours.
    signature: bytes | None = None
    # Signal its whole process group (a server that spawns workers), not just the pid.
    signal_group: bool = False
    # How it is asked to stop: a Prefect worker shuts down on SIGINT and ignores SIGTERM.
    stop_signal: signal.Signals = signal.SIGTERM

    def start(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Spawn `command` in a new session, output appended to the log; record its pid."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                list(command),
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so a stop reaches its children
                preexec_fn=preexec_fn,
            )
        self.pid_file.write_text(str(process.pid))
        return process

    def wait_ready(
        self,
        process: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        timeout: float,
        name: str,
        poll: float = 0.2,
    ) -> bool:
        """Wait until `ready()`; False on timeout, TransientError if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise TransientError(
                    f"{name} exited with code {process.returncode} during start-up; "
                    f"log {self.log_file}:\n{self.log_tail()}"
                )
            if ready():
                return True
            time.sleep(poll)
        return False

    def read_pid(self) -> int | None:
        """Pid of the process if it is alive (and ours); None for a missing, dead or reused pid."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if self.signature is None:
            return pid
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            # Where /proc is missing the file is all there is to go by.
            return pid if not Path("/proc/self").exists() else None
        except OSError:
            return pid
        return pid if self.signature in cmdline else None

    def is_alive(self) -> bool:
        """True when the process of the pid file runs."""
        return self.read_pid() is not None

    def stop(self, timeout: float) -> bool:
        """Stop the process (its stop signal, then SIGKILL after `timeout` s); True if it ran."""
        pid = self.read_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.read_pid() is not None:
            # Reap it when we are its parent, or it lingers as a zombie that kill(0) still sees.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if self.read_pid() is not None:
            self._signal(pid, signal.SIGKILL)
        _reap(pid, timeout=max(timeout, 5.0))
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the log ("" when there is none yet)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _signal(self, pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.signal_group:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)


def _reap(pid: int, timeout: float) -> None:
    """Collect the exit status of `pid` when it is our child, waiting up to `timeout` seconds.

    A process that has begun to exit can already look gone in /proc (its command line is empty)
    while the kernel does not yet report it to waitpid; reaping once would leave it behind.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child, or already collected
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.05)
