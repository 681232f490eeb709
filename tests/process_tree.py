"""Processes a test's commands left behind, found by an entry of their environment."""

from __future__ import annotations

import time
from pathlib import Path


def processes_with(env_entry: str, command_part: str = "") -> list[int]:
    """Live (not zombie) processes whose environment holds `env_entry` ("NAME=value") and
    whose command line contains `command_part`."""
    marker = env_entry.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ours = marker in (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if ours and command_part in command and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_until_gone(env_entry: str, command_part: str = "", seconds: float = 15.0) -> list[int]:
    """The processes `processes_with` still finds after up to `seconds` (none, once gone)."""
    deadline = time.monotonic() + seconds
    while (left := processes_with(env_entry, command_part)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
