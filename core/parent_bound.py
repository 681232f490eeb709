"""Run a Python module as a child that does not outlive the process that started it.

    FRESHKB_BOUND_TO_PID=<the parent's pid> python -m freshkb.core.parent_bound MODULE [ARG ...]

A server a command starts for its own use only (Prefect's temporary API server) runs in a
session of its own, so that stopping it reaches its children; the command stops it at exit.
But a command killed outright (SIGKILL, the OOM killer) runs no exit handler, and the server
would live on as an orphan, holding its port and a few hundred MB. Here a watcher thread sees
the parent go (the child is handed to another parent) within a second and sends the child
SIGTERM, which the server takes as a request to shut down cleanly.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_SECONDS = 1.0
# The pid of the process the child is bound to, set by the one that starts it: read from the
# child's own parent pid instead, a parent already gone by then would go unnoticed.
PARENT_VARIABLE = "FRESHKB_BOUND_TO_PID"


def stop_when_orphaned(parent: int, poll: float = POLL_SECONDS) -> threading.Thread:
    """A daemon thread that sends this process SIGTERM once its parent is no longer `parent`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    watcher.start()
    return watcher


def main(argv: list[str]) -> None:
    """Run `argv[0]` as __main__ with the rest as its arguments, bound to this parent."""
    if not argv:
        raise SystemExit("usage: python -m freshkb.core.parent_bound MODULE [ARG ...]")
    stop_when_orphaned(int(os.environ.get(PARENT_VARIABLE) or os.getppid()))
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
