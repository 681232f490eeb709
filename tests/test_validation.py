"""The validation gate with real Great Expectations, the freshness ledger on a real SQLite
file, and the mass-deletion breaker."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from freshkb.core.durations import parse_duration
from freshkb.core.records import LoadedDocument, LoadFailure, SourceKind, StoredDocument
from freshkb.core.report import RunReport
from freshkb.core.sources import AnySource, parse_source
from freshkb.loaders import loader_for
from freshkb.store.ledger import Ledger
from freshkb.store.sync import plan_sync
from freshkb.validation.breaker import MassDeletionRefused, check_deletions
from freshkb.validation.freshness import FreshnessState
from freshkb.validation.gate import validate_load

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def customers_source(folder: Path, **extra: Any) -> AnySource:
    """A customers source over `folder`, keyed by customer_id."""
    fields = {
        "name": "crm",
        "kind": "customers",
        "location": str(folder),
        "customer_id": "customer_id",
        "key": "customer_id",
        **extra,
    }
    return parse_source(fields)


def write_customers(path: Path, count: int, **overrides: Any) -> None:
    """A CSV of `count` customers; `overrides` maps a row number to replaced fields."""
    rows = []
    for n in range(count):
        row = {
            "customer_id": f"C-{n:04d}",
            "name": f"Customer {n}",
            "email": f"customer{n}@example.com",
            "updated_at": "2026-11-24T08:00:00Z",
        }
        row.update(overrides.get(f"row{n}", {}))
        rows.append(row)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def gate(source: AnySource, tmp_path: Path | None = None, now: datetime = NOW):
    """Load the source for real and run its gate."""
    return validate_load(source, loader_for(source).load(), results_dir=tmp_path, now=now)


def test_clean_records_pass_and_gx_results_are_saved_as_json(tmp_path):
    write_customers(tmp_path / "customers.csv", 40)
    source = customers_source(
        tmp_path,
        expectations={"required": ["email", "name"], "formats": {"email": "email"}},
        freshness={"record_max_age": "7d"},
    )
    outcome = gate(source, tmp_path / "results")
    assert outcome.success, outcome.failures
    assert outcome.evaluated >= 7
    saved = json.loads(Path(outcome.results_file).read_text())
    assert saved["success"] is True
    types = {r["expectation_config"]["type"] for res in saved["results"] for r in res["results"]}
    assert {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_match_regex",
        "expect_column_max_to_be_between",
        "expect_compound_columns_to_be_unique",
        "expect_table_row_count_to_be_between",
    } <= types
    assert outcome.newest_record_at == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def test_required_field_missing_in_ten_percent_of_records_fails_the_gate(tmp_path):
    blanks = {f"row{n}": {"email": ""} for n in range(0, 50, 10)}
    write_customers(tmp_path / "customers.csv", 50, **blanks)
    outcome = gate(customers_source(tmp_path, expectations={"required": ["email"]}))
    assert not outcome.success
    assert len(outcome.failures) == 1
    assert "required field 'email'" in outcome.failures[0]
    assert "5 of 50 values fail" in outcome.failures[0]


def test_required_field_absent_from_every_record_is_named(tmp_path):
    write_customers(tmp_path / "customers.csv", 5)
    outcome = gate(customers_source(tmp_path, expectations={"required": ["phone"]}))
    assert not outcome.success
    assert "field 'phone' is missing" in outcome.failures[0]


def test_duplicate_primary_key_fails_the_gate_even_though_the_loader_dropped_it(tmp_path):
    write_customers(tmp_path / "customers.csv", 30, row7={"customer_id": "C-0003"})
    source = customers_source(tmp_path)
    loaded = loader_for(source).load()
    assert [f.reason for f in loaded.failures] == [
        "duplicate key 'C-0003', first seen at record 4; kept the first"
    ]
    outcome = validate_load(source, loaded, now=NOW)
    assert not outcome.success
    assert any("primary keys are unique" in f and "C-0003" in f for f in outcome.failures)


def test_email_format_and_unique_field(tmp_path):
    write_customers(
        tmp_path / "customers.csv",
        10,
        row2={"email": "not-an-address"},
        row5={"email": "customer1@example.com"},
    )
    source = customers_source(
        tmp_path, expectations={"formats": {"email": "email"}, "unique": ["email"]}
    )
    failures = gate(source).failures
    assert any("match the format 'email'" in f and "not-an-address" in f for f in failures)
    assert any("values of 'email' are unique" in f for f in failures)


def test_newest_record_older_than_its_sla_fails_the_gate(tmp_path):
    write_customers(tmp_path / "customers.csv", 10)  # newest update 2026-11-24 08:00
    source = customers_source(tmp_path, freshness={"record_max_age": "2d"})
    assert gate(source, now=NOW).success
    outcome = gate(source, now=NOW + timedelta(days=3))
    assert not outcome.success
    assert "the newest record was updated within 2d" in outcome.failures[0]


def test_per_file_expectations_apply_to_their_own_files(tmp_path):
    write_customers(tmp_path / "customers.csv", 5)
    (tmp_path / "orders.json").write_text(
        json.dumps([{"order_id": "O-1", "customer_id": "C-0001", "total": None}])
    )
    source = customers_source(
        tmp_path,
        expectations={"required": ["email"]},
        files={
            "orders.json": {
                "key": "order_id",
                "expectations": {"required": ["order_id", "total"]},
            }
        },
    )
    failures = gate(source).failures
    assert len(failures) == 1
    assert failures[0].startswith("records orders.json: required field 'total'")


def test_too_many_unreadable_files_fail_the_gate(tmp_path):
    for n in range(4):
        (tmp_path / f"good{n}.md").write_text(f"# Policy {n}\n\nText of policy {n}.\n")
        (tmp_path / f"bad{n}.pdf").write_bytes(b"")
    source = parse_source({"name": "kb", "kind": "documents", "location": str(tmp_path)})
    outcome = gate(source)
    assert not outcome.success
    assert "at most 25% of items fail to load" in outcome.failures[0]
    assert "4 of 8 values fail" in outcome.failures[0]
    lenient = source.model_copy(
        update={"expectations": source.expectations.model_copy(update={"max_failed_share": 0.5})}
    )
    assert gate(lenient).success


def test_failed_share_names_the_files_and_ignores_unsupported_types(tmp_path):
    for n in range(3):
        (tmp_path / f"good{n}.md").write_text(f"# Policy {n}\n\nText of policy {n}.\n")
    (tmp_path / "truncated.pdf").write_bytes(b"%PDF-1.7\n1 0 obj")
    (tmp_path / "empty.docx").write_bytes(b"")
    # Licence files and notes sit beside real documents in knowledge folders; they are
    # reported, but do not count as files that failed to parse.
    (tmp_path / "LICENSE").write_text("MIT License")
    (tmp_path / "NOTES.tau-bench").write_text("where these came from")
    source = parse_source({"name": "kb", "kind": "documents", "location": str(tmp_path)})
    loaded = loader_for(source).load()
    assert {f.item for f in loaded.failures if f.unsupported} == {"LICENSE", "NOTES.tau-bench"}
    outcome = gate(source)
    assert not outcome.success
    assert "2 of 5 values fail" in outcome.failures[0], outcome.failures
    assert "truncated.pdf (" in outcome.failures[0] and "empty.docx (" in outcome.failures[0]
    assert "False" not in outcome.failures[0], "the failing files are named, not their value"
    for n in range(3, 6):  # 2 of 8 candidates failing is within 25%; counted with the two
        (tmp_path / f"good{n}.md").write_text(f"# Policy {n}\n\nMore.\n")  # others: 4 of 10
    assert gate(source).success


def test_empty_source_fails_the_document_count(tmp_path):
    source = parse_source({"name": "kb", "kind": "documents", "location": str(tmp_path)})
    outcome = gate(source)
    assert not outcome.success
    assert "documents loaded within the expected bounds" in outcome.failures[0]
    assert "observed 0" in outcome.failures[0]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_in_config_names_the_fix():
    with pytest.raises(ValueError, match="write it as 90s, 15m, 24h"):
        parse_source(
            {"name": "x", "kind": "documents", "location": ".", "freshness": {"max_age": "soon"}}
        )


# -- ledger -----------------------------------------------------------------------------------


def docs_source(name: str = "kb", max_age: str = "1h", **extra: Any) -> AnySource:
    """A documents source with a freshness SLA (the folder is never read here)."""
    return parse_source(
        {
            "name": name,
            "kind": "documents",
            "location": "/nowhere",
            "freshness": {"max_age": max_age},
            **extra,
        }
    )


def run(ledger: Ledger, source: AnySource, at: datetime, status: str = "completed", **kw):
    """Record one finished run in the ledger."""
    run_id = ledger.record_attempt(source, f"run-{at.isoformat()}", at)
    report = RunReport(
        source=source.name,
        kind=source.kind.value,
        status=status,
        flow_run_id=f"run-{at}",
        error=kw.get("error"),
    )
    ledger.record_result(run_id, report, at + timedelta(seconds=5), kw.get("newest"))


@pytest.fixture
def ledger(tmp_path):
    """A ledger on a real SQLite file."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield ledger
    ledger.close()


def test_source_turns_stale_by_the_clock_alone(ledger):
    source = docs_source(max_age="1h")
    run(ledger, source, NOW)
    assert ledger.state("kb", NOW + timedelta(minutes=30)).state is FreshnessState.FRESH
    later = ledger.state("kb", NOW + timedelta(hours=2))
    assert later.state is FreshnessState.STALE
    assert later.reasons[0].startswith("last successful sync 120m ago, older than its SLA of 60m")


def test_failed_run_keeps_the_last_success_and_a_good_run_clears_it(ledger):
    source = docs_source(max_age="6h")
    run(ledger, source, NOW)
    run(ledger, source, NOW + timedelta(hours=1), status="failed", error="validation failed: x")
    state = ledger.state("kb", NOW + timedelta(hours=1, minutes=1))
    assert state.state is FreshnessState.FAILED
    assert state.last_success_at == NOW + timedelta(seconds=5)
    assert state.reasons == ("last run failed: validation failed: x",)
    run(ledger, source, NOW + timedelta(hours=2))
    state = ledger.state("kb", NOW + timedelta(hours=2, minutes=1))
    assert state.state is FreshnessState.FRESH and state.reasons == ()
    assert [r.status for r in ledger.runs("kb")] == ["completed", "failed", "completed"]


def test_stale_beats_failed_and_never_synced_is_listed(ledger):
    run(ledger, docs_source("a", max_age="1h"), NOW)
    run(ledger, docs_source("a", max_age="1h"), NOW + timedelta(hours=3), "failed", error="down")
    states = {s.name: s for s in ledger.states(NOW + timedelta(hours=3), [docs_source("b")])}
    assert states["a"].state is FreshnessState.STALE
    assert "last run failed: down" in states["a"].reasons
    assert states["b"].state is FreshnessState.NEVER_SYNCED


def test_customer_source_with_old_newest_record_is_stale(ledger):
    source = customers_source(Path("/nowhere"), freshness={"max_age": "7d", "record_max_age": "2d"})
    run(ledger, source, NOW, newest=NOW - timedelta(days=1))
    assert ledger.state("crm", NOW + timedelta(hours=1)).state is FreshnessState.FRESH
    stale = ledger.state("crm", NOW + timedelta(hours=23))
    assert stale.state is FreshnessState.FRESH
    stale = ledger.state("crm", NOW + timedelta(days=1, hours=1))
    assert stale.state is FreshnessState.STALE
    assert stale.reasons[0].startswith("newest record updated 2d 1h ago")


def test_rollback_caps_the_last_success_of_its_kind(ledger):
    run(ledger, docs_source("a", max_age="1h"), NOW)
    ledger.cap_last_success("documents", NOW - timedelta(hours=2))
    assert ledger.state("a", NOW).state is FreshnessState.STALE


# -- breaker ----------------------------------------------------------------------------------


def stored(n: int) -> dict[str, StoredDocument]:
    """`n` complete stored documents."""
    return {f"d{i}": StoredDocument(f"d{i}", "h", 1, True) for i in range(n)}


def loaded(ids: list[str]) -> list[LoadedDocument]:
    """Loaded documents with the stored hash (unchanged)."""
    return [LoadedDocument("kb", SourceKind.DOCUMENTS, i, i, i, "h", NOW, ()) for i in ids]


def test_breaker_refuses_a_pull_that_deletes_too_much():
    plan = plan_sync("kb", loaded(["d0", "d1", "d2"]), [], stored(10))
    with pytest.raises(MassDeletionRefused, match=r"delete 7 of its 10 live documents \(70%"):
        check_deletions("kb", plan, 10, 0.3, allow=False)
    check_deletions("kb", plan, 10, 0.3, allow=True)


def test_breaker_allows_ordinary_deletions_and_refuses_an_empty_pull():
    plan = plan_sync("kb", loaded([f"d{i}" for i in range(8)]), [], stored(10))
    check_deletions("kb", plan, 10, 0.3, allow=False)
    empty = plan_sync("kb", [], [], stored(10))
    with pytest.raises(MassDeletionRefused, match="returned nothing at all"):
        check_deletions("kb", empty, 10, 0.3, allow=False)


def test_breaker_does_not_count_documents_kept_after_a_failed_load_as_deleted():
    from freshkb.core import ids

    keys = [f"f{i}.md" for i in range(10)]
    live = {
        ids.document_id("kb", key): StoredDocument(ids.document_id("kb", key), "h", 1, True)
        for key in keys
    }
    plan = plan_sync("kb", [], [LoadFailure("kb", key, "corrupt") for key in keys], live)
    assert len(plan.kept_after_failure) == 10 and plan.deleted == ()
    check_deletions("kb", plan, 10, 0.3, allow=False)  # the gate, not the breaker, stops it
