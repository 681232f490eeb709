"""Durations as people write them in config files (90s, 15m, 24h, 7d, 2w) and read them back."""

from __future__ import annotations

import re

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
