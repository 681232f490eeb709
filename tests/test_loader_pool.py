"""PDF and DOCX files partitioned in worker processes: the same documents as in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_files import write_docx, write_pdf

from freshkb.core import ids
from freshkb.core.records import SourceKind
from freshkb.core.sources import parse_source
from freshkb.loaders import loader_for
from freshkb.loaders.base import worker_pool


def _folder(tmp_path: Path) -> Path:
    write_pdf(tmp_path / "a-terms.pdf", [["Rental terms", "Deposits are 150 dollars."]])
    write_pdf(
        tmp_path / "b-late.pdf",
        [["Late returns", "Late rentals cost one extra day."], ["Damage", "Tears are billed."]],
    )
    write_docx(tmp_path / "c-care.docx", "Gear care", ["Dry a tent before storing it."])
    (tmp_path / "d-broken.pdf").write_bytes(b"PK\x03\x04 a zip, not a PDF")
    (tmp_path / "e-returns.md").write_text("# Returns\n\nUnworn shoes: 60 days.\n")
    return tmp_path


def _comparable(result):
    """Everything a load says but the files' modification times (equal anyway)."""
    documents = [(d.key, d.title, d.content_hash, d.sections, d.metadata) for d in result.documents]
    failures = [(f.item, f.reason) for f in result.failures]
    return documents, failures


@pytest.mark.timeout(240)
def test_partition_workers_load_the_same_documents_and_failures_in_file_order(tmp_path):
    source = parse_source(
        {"name": "docs", "kind": SourceKind.DOCUMENTS, "location": str(_folder(tmp_path))}
    )
    seen: list[str] = []
    pooled = loader_for(source, processes=2).load(lambda done, total, item: seen.append(item))
    serial = loader_for(source, processes=1).load()

    assert _comparable(pooled) == _comparable(serial)
    assert [d.key for d in pooled.documents] == [
        "a-terms.pdf",
        "b-late.pdf",
        "c-care.docx",
        "e-returns.md",
    ]
    assert [f.item for f in pooled.failures] == ["d-broken.pdf"]
    assert "not a PDF" in pooled.failures[0].reason
    assert seen == sorted(seen) and len(seen) == 5
    late = next(d for d in pooled.documents if d.key == "b-late.pdf")
    assert {s.page for s in late.sections} == {1, 2}


@pytest.mark.timeout(240)
def test_indexed_unchanged_pdfs_start_no_worker(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    source = parse_source({"name": "docs", "kind": SourceKind.DOCUMENTS, "location": str(folder)})
    indexed = {
        ids.document_id("docs", name): ids.content_hash((folder / name).read_bytes())
        for name in ("a-terms.pdf", "b-late.pdf", "c-care.docx")
    }
    pools: list[tuple[int, int]] = []
    original = worker_pool

    def counting(processes: int, jobs: int):
        pools.append((processes, jobs))
        return original(processes, jobs)

    monkeypatch.setattr("freshkb.loaders.base.worker_pool", counting)
    result = loader_for(source, indexed, processes=2).load()
    # the broken PDF alone still needs parsing: one job, so no pool is started for it
    assert pools == [(2, 1)]
    reused = [d.key for d in result.documents if d.metadata.get("reused")]
    assert reused == ["a-terms.pdf", "b-late.pdf", "c-care.docx"]
