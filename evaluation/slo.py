"""The SLOs in writing: slo.yaml read into targets, and measured figures checked against them.

    volume: {queries_per_day: 2000}
    targets:
      answer_latency_p95_ms: {max: 6000}
      page_hit_at_5: {min: 0.75}

Each target is a floor (`min`) or a ceiling (`max`) on one figure of `freshkb eval`
(evaluation/metrics.py names them). `monthly_budget_usd` is derived: cost per query x
queries per day x 30. A target whose figure was not measured is reported as such, never
passed without a word.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from freshkb.core.errors import ConfigError

DAYS_PER_MONTH = 30
MONTHLY_BUDGET = "monthly_budget_usd"
COST_PER_QUERY = "cost_per_query_usd"
# The figures a target may name: the schema others code against, plus every figure the
# harness measures (stage latencies are named stage_<stage>_p50_ms / _p95_ms).
KNOWN_TARGETS = frozenset(
    {
        "answer_latency_p50_ms",
        "answer_latency_p95_ms",
        COST_PER_QUERY,
        MONTHLY_BUDGET,
        "availability",
        "hallucination_rate",
        "out_of_scope_declined",
        "false_refusal_rate",
        "injection_blocked",
        "injection_false_positive_rate",
        "page_hit_at_1",
        "page_hit_at_5",
        "mrr",
        "cited_right_page",
        "grounded_share",
        "answer_token_f1_approx",
        "answer_cosine_approx",
        "indirect_injection_carried_rate",
        "indirect_injection_flagged_rate",
        "staleness_right_mode",
        "tokens_per_answer",
    }
)
STAGE_TARGET = re.compile(r"^stage_[a-z_]+_p(50|95)_ms$")
EXAMPLE = "e.g. `page_hit_at_5: {min: 0.75}` or `answer_latency_p95_ms: {max: 6000}`"


class SloError(ConfigError):
    """slo.yaml cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SloTarget:
    """One written target: a floor or a ceiling on one figure."""

    name: str
    bound: Literal["min", "max"]
    value: float


@dataclass(frozen=True)
class SloCheck:
    """One target against what was measured; `passed` is None when it was not measured."""

    name: str
    bound: Literal["min", "max"]
    target: float
    measured: float | None
    passed: bool | None

    @property
    def status(self) -> str:
        """PASS, FAIL or NOT MEASURED."""
        if self.passed is None:
            return "NOT MEASURED"
        return "PASS" if self.passed else "FAIL"


@dataclass(frozen=True)
class SloTargets:
    """The SLO file: the projected volume and the targets, in the file's order."""

    path: Path
    queries_per_day: float
    targets: dict[str, SloTarget]

    def derived(self, measured: dict[str, float]) -> dict[str, float]:
        """The measured figures plus those the file's volume derives (the monthly budget)."""
        figures = dict(measured)
        if COST_PER_QUERY in measured:
            monthly = measured[COST_PER_QUERY] * self.queries_per_day * DAYS_PER_MONTH
            figures[MONTHLY_BUDGET] = round(monthly, 6)
        return figures

    def check(self, measured: dict[str, float]) -> list[SloCheck]:
        """Every target against the measured figures (the monthly budget derived here)."""
        figures = self.derived(measured)
        checks = []
        for target in self.targets.values():
            value = figures.get(target.name)
            if value is None or math.isnan(value):
                checks.append(SloCheck(target.name, target.bound, target.value, None, None))
                continue
            ok = value >= target.value if target.bound == "min" else value <= target.value
            checks.append(SloCheck(target.name, target.bound, target.value, value, ok))
        return checks


def load_slo(path: Path) -> SloTargets:
    """The targets of an SLO file; SloError naming the file and the fix when it is unusable."""
    if not path.is_file():
        raise SloError(
            f"{path}: SLO file not found; write one beside freshkb.yaml (see slo.yaml in the "
            "freshkb repository), set `slo_file` in the settings, or pass --slo"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SloError(f"{path}: not valid YAML ({exc}); fix the syntax and rerun") from exc
    if not isinstance(data, dict):
        raise SloError(f"{path}: expected a mapping with `volume:` and `targets:` at the top")
    unknown_keys = sorted(set(data) - {"volume", "targets"})
    if unknown_keys:
        raise SloError(
            f"{path}: unknown top-level key(s) {', '.join(unknown_keys)}; only `volume:` and "
            "`targets:` belong there"
        )
    return SloTargets(path, _queries_per_day(path, data.get("volume")), _targets(path, data))


def _queries_per_day(path: Path, volume: Any) -> float:
    per_day: Any = volume.get("queries_per_day") if isinstance(volume, dict) else None
    if not _is_number(per_day) or per_day <= 0:
        raise SloError(
            f"{path}: `volume: {{queries_per_day: N}}` needs a positive number N, the projected "
            "daily queries the monthly budget is computed for"
        )
    return float(per_day)


def _targets(path: Path, data: dict[str, Any]) -> dict[str, SloTarget]:
    targets = data.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise SloError(f"{path}: `targets:` needs at least one target, {EXAMPLE}")
    parsed = {}
    for name, spec in targets.items():
        if name not in KNOWN_TARGETS and not STAGE_TARGET.match(str(name)):
            raise SloError(
                f"{path}: unknown target {name!r}; fix its name, one of: "
                + ", ".join(sorted(KNOWN_TARGETS))
            )
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("min", "max"):
            raise SloError(
                f"{path}: target {name!r} must be either {{min: x}} or {{max: x}}, {EXAMPLE}"
            )
        bound, value = next(iter(spec.items()))
        if not _is_number(value):
            raise SloError(f"{path}: target {name!r}: {bound} must be a number, not {value!r}")
        parsed[name] = SloTarget(name, bound, float(value))
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
