"""bench/run_all.py's own checks between benches: a port a bench left held is named, with the
process holding it, instead of surfacing as the next bench's failure."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_all() -> ModuleType:
    """bench/run_all.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_a_held_port_names_its_holder_and_a_free_one_is_none() -> None:
    harness = run_all()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        holder = harness.port_holder(port)
        assert holder is not None and holder.startswith(f"pid {os.getpid()}:")
        assert harness.wait_for_ports((port,), seconds=0) == [f"port {port} held by {holder}"]
    assert harness.port_holder(port) is None
    assert harness.wait_for_ports((port,), seconds=0) == []
