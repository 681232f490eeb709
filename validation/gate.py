"""The validation gate: Great Expectations suites run on a source's load before any write.

The suites come from the source's `expectations:` and `freshness:` config (see README). GX's own
result objects are kept: each run's results are written as JSON, and the run report carries a
summary naming every failed expectation in words.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from freshkb.core.records import LoadResult
from freshkb.core.report import ValidationSummary
from freshkb.core.sources import (
    NAMED_FORMATS,
    CustomerSourceConfig,
    Expectations,
    RecordExpectations,
    SourceConfig,
)
from freshkb.validation.frames import RECORD_TIME, ValidationFrames, build_frames

# GX sends usage statistics unless told not to; freshkb never phones home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class Check:
    """One expectation, and the frame it runs on."""

    frame: str
    expectation: Any  # a great_expectations Expectation


@dataclass
class ValidationOutcome:
    """Whether a load passed its gate, GX's results as JSON, and the failures in words."""

    success: bool
    evaluated: int
    failed: int
    failures: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    results_file: str | None = None
    newest_record_at: datetime | None = None

    def summary(self) -> ValidationSummary:
        """What the run report and the ledger keep (results stay in the JSON file)."""
        return ValidationSummary(
            self.success, self.evaluated, self.failed, tuple(self.failures), self.results_file
        )


def build_checks(source: SourceConfig, frames: ValidationFrames, now: datetime) -> list[Check]:
    """Every expectation of a source, each bound to the frame it checks."""
    checks = _load_checks(source.expectations)
    if isinstance(source, CustomerSourceConfig):
        checks += _record_checks(source, frames, now)
    return checks


def _load_checks(expect: Expectations) -> list[Check]:
    """What every source is held to: the failed share, the document count, no empty text."""
    import great_expectations.expectations as gxe

    return [
        Check(
            "items",
            gxe.ExpectColumnValuesToBeInSet(
                column="loaded",
                value_set=[True],
                mostly=max(1.0 - expect.max_failed_share, 1e-9),
                meta={"explain": f"at most {expect.max_failed_share:.0%} of items fail to load"},
            ),
        ),
        Check(
            "documents",
            gxe.ExpectTableRowCountToBeBetween(
                min_value=expect.min_documents,
                max_value=expect.max_documents,
                meta={"explain": "documents loaded within the expected bounds"},
            ),
        ),
        Check(
            "documents",
            gxe.ExpectColumnValuesToBeBetween(
                column="text_chars",
                min_value=1,
                meta={"explain": "no document has empty text"},
            ),
        ),
    ]


def _record_checks(
    source: CustomerSourceConfig, frames: ValidationFrames, now: datetime
) -> list[Check]:
    """Customer records, per file group: unique keys, its column rules, and record age."""
    import great_expectations.expectations as gxe

    checks: list[Check] = []
    for group, frame in frames.record_groups.items():
        name = f"records {group}"
        checks.append(
            Check(
                name,
                gxe.ExpectCompoundColumnsToBeUnique(
                    column_list=["_file", "_record_key"],
                    meta={"explain": "primary keys are unique within each file"},
                ),
            )
        )
        checks += _column_checks(name, source.record_expectations(group), list(frame.columns))
    record_max_age = source.freshness.record_max_age_seconds
    if record_max_age is None:
        return checks
    oldest_allowed = now - timedelta(seconds=record_max_age)
    explain = f"the newest record was updated within {source.freshness.record_max_age}"
    checks += [
        Check(
            f"records {group}",
            gxe.ExpectColumnMaxToBeBetween(
                column=RECORD_TIME, min_value=oldest_allowed, meta={"explain": explain}
            ),
        )
        for group in frames.record_groups
    ]
    return checks


def _column_checks(frame: str, rules: RecordExpectations, columns: list[str]) -> list[Check]:
    import great_expectations.expectations as gxe

    checks = [
        Check(frame, gxe.ExpectColumnToExist(column=name))
        for name in sorted({*rules.required, *rules.unique, *rules.formats})
        if name not in columns
    ]
    present = set(columns)
    checks += [
        Check(
            frame,
            gxe.ExpectColumnValuesToNotBeNull(
                column=name, meta={"explain": f"required field {name!r} is never empty"}
            ),
        )
        for name in rules.required
        if name in present
    ]
    checks += [
        Check(
            frame,
            gxe.ExpectColumnValuesToBeUnique(
                column=name, meta={"explain": f"values of {name!r} are unique"}
            ),
        )
        for name in rules.unique
        if name in present
    ]
    checks += [
        Check(
            frame,
            gxe.ExpectColumnValuesToMatchRegex(
                column=name,
                regex=NAMED_FORMATS.get(pattern, pattern),
                meta={"explain": f"values of {name!r} match the format {pattern!r}"},
            ),
        )
        for name, pattern in rules.formats.items()
        if name in present
    ]
    return checks


def validate_load(
    source: SourceConfig,
    loaded: LoadResult,
    *,
    results_dir: Path | None = None,
    run_id: str = "local",
    now: datetime | None = None,
) -> ValidationOutcome:
    """Run the source's suites on its load with GX; save the results if `results_dir` is given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    now = now or datetime.now(UTC)
    frames = build_frames(source, loaded)
    checks = build_checks(source, frames, now)
    tables: dict[str, pd.DataFrame] = {"items": frames.items, "documents": frames.documents}
    tables |= {f"records {group}": frame for group, frame in frames.record_groups.items()}

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas(f"freshkb-{source.name}")
    results: list[dict[str, Any]] = []
    for index, (frame_name, frame) in enumerate(tables.items()):
        expectations = [check.expectation for check in checks if check.frame == frame_name]
        if not expectations:
            continue
        asset = datasource.add_dataframe_asset(f"frame-{index}")
        batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
            batch_parameters={"dataframe": frame}
        )
        suite = gx.ExpectationSuite(name=f"{source.name}: {frame_name}", expectations=expectations)
        result = batch.validate(suite, result_format="SUMMARY")
        data = result.to_json_dict()
        data["freshkb_frame"] = frame_name
        results.append(data)

    failures = [
        f"{res['freshkb_frame']}: {describe(item, tables[res['freshkb_frame']])}"
        for res in results
        for item in res["results"]
        if not item["success"]
    ]
    evaluated = sum(len(res["results"]) for res in results)
    outcome = ValidationOutcome(
        success=not failures,
        evaluated=evaluated,
        failed=len(failures),
        failures=failures,
        results=results,
        newest_record_at=_newest_record(frames),
    )
    if results_dir is not None:
        outcome.results_file = str(_save(results_dir, source.name, run_id, now, outcome))
    return outcome


def describe(item: dict[str, Any], frame: pd.DataFrame | None = None) -> str:
    """A failed GX expectation result in words: what was expected and what was seen.

    With the validated frame at hand, failing rows of the items frame are named by their item
    (file or record) and reason rather than by their value, which is only ever `False` there.
    """
    config = item["expectation_config"]
    kind = config["type"]
    kwargs = config.get("kwargs", {})
    result = item.get("result") or {}
    exception = (item.get("exception_info") or {}).get("exception_message")
    explain = (config.get("meta") or {}).get("explain")
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    subject = explain or (f"{column}: {kind}" if column else kind)
    if exception:
        return f"{subject} ({kind}) could not be evaluated: {exception}"
    if "unexpected_count" in result:
        sample = result.get("partial_unexpected_list") or []
        shown = ", ".join(repr(v) for v in sample[:3])
        rows = result.get("partial_unexpected_index_list") or []
        if frame is not None and "item" in frame.columns and rows:
            shown = (
                "; ".join(
                    f"{frame.at[row, 'item']}"
                    + (f" ({frame.at[row, 'reason']})" if "reason" in frame.columns else "")
                    for row in rows[:3]
                    if row in frame.index
                )
                or shown
            )
        return (
            f"{subject} ({kind}): {result['unexpected_count']} of {result.get('element_count')} "
            f"values fail" + (f", e.g. {shown}" if shown else "")
        )
    if kind == "expect_column_to_exist":
        return f"field {column!r} is missing from every record ({kind})"
    observed = result.get("observed_value")
    bounds = [
        f"{name}={kwargs[name]}"
        for name in ("min_value", "max_value")
        if kwargs.get(name) is not None
    ]
    return f"{subject} ({kind}): observed {observed}, expected {' '.join(bounds)}"


def _newest_record(frames: ValidationFrames) -> datetime | None:
    stamps = [
        frame[RECORD_TIME].max()
        for frame in frames.record_groups.values()
        if RECORD_TIME in frame and frame[RECORD_TIME].notna().any()
    ]
    return max(stamps).to_pydatetime() if stamps else None


def _save(
    results_dir: Path, source: str, run_id: str, now: datetime, outcome: ValidationOutcome
) -> Path:
    folder = results_dir / source
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now.strftime('%Y%m%dT%H%M%SZ')}-{run_id}.json"
    document = {
        "source": source,
        "flow_run_id": run_id,
        "validated_at": now.isoformat(),
        "success": outcome.success,
        "failures": outcome.failures,
        "results": outcome.results,
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    return path
