"""Managed processes: started, found again through their pid file, stopped for real."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from process_tree import processes_with, wait_until_gone

from freshkb.core.errors import TransientError
from freshkb.core.processes import ManagedProcess

# A stand-in server: says it started, then waits to be stopped.
SERVER = "import time; print('serving', flush=True); time.sleep(120)"


def managed(tmp_path: Path, **options: object) -> ManagedProcess:
    """A managed process with its files in `tmp_path`."""
    return ManagedProcess(tmp_path / "server.pid", tmp_path / "server.log", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("signal_group", [False, True])
def test_started_process_is_found_by_its_pid_file_and_stopped(
    tmp_path: Path, signal_group: bool
) -> None:
    process = managed(tmp_path, signature=b"time.sleep", signal_group=signal_group)
    popen = process.start([sys.executable, "-c", SERVER], env=dict(os.environ))
    assert process.wait_ready(popen, lambda: "serving" in process.log_tail(), 30, name="server")
    assert process.read_pid() == popen.pid and process.is_alive()

    assert process.stop(timeout=10)

    assert popen.wait(timeout=10) is not None, "the server itself has exited"
    assert not process.is_alive() and not process.pid_file.exists()
    assert not process.stop(timeout=10)


def test_a_pid_of_someone_elses_process_is_not_ours(tmp_path: Path) -> None:
    process = managed(tmp_path, signature=b"freshkb.serving.llm_process")
    process.pid_file.write_text(str(os.getpid()))  # alive, but this test runner
    assert process.read_pid() is None
    assert managed(tmp_path).read_pid() == os.getpid(), "without a signature the file is trusted"


def test_stale_or_garbled_pid_file_means_not_running(tmp_path: Path) -> None:
    process = managed(tmp_path)
    assert process.read_pid() is None
    process.pid_file.write_text("not a pid")
    assert process.read_pid() is None
    assert not process.stop(timeout=1)
    assert not process.pid_file.exists()


def test_exit_during_start_up_raises_with_the_log_tail(tmp_path: Path) -> None:
    process = managed(tmp_path)
    crash = "import sys; print('bad flag --x', flush=True); sys.exit(3)"
    popen = process.start([sys.executable, "-c", crash], env=dict(os.environ))
    with pytest.raises(TransientError, match=r"(?s)server exited with code 3.*bad flag --x"):
        process.wait_ready(popen, lambda: False, 30, name="server")
    assert not process.pid_file.exists()


# A command that starts a parent-bound child (a real HTTP server) and then waits to be killed.
PARENT = """
import os, subprocess, sys, time
from freshkb.core.parent_bound import PARENT_VARIABLE
child = subprocess.Popen(
    [sys.executable, "-m", "freshkb.core.parent_bound", "http.server", "0", "--bind", "127.0.0.1"],
    env={**os.environ, PARENT_VARIABLE: str(os.getpid())},
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_parent_bound_server_stops_when_the_command_that_started_it_is_killed() -> None:
    import signal
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.5)  # the child runs its module, its watcher started
        assert processes_with(bound_to(parent.pid)) == [child], "it runs while its parent does"
    finally:
        os.kill(parent.pid, signal.SIGKILL)  # no exit handler runs
        parent.wait(10)
    assert wait_until_gone(bound_to(parent.pid)) == [], "the orphaned server stopped by itself"


def bound_to(parent: int) -> str:
    """The environment entry of a process started bound to `parent`."""
    from freshkb.core.parent_bound import PARENT_VARIABLE

    return f"{PARENT_VARIABLE}={parent}"
