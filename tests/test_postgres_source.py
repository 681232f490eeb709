"""A customers source in a real PostgreSQL server (Debian's postgresql package), on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy
from postgres_server import postgres_server

from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import SourceKind
from freshkb.core.sources import CustomerSqlSourceConfig
from freshkb.loaders import loader_for

pytestmark = [pytest.mark.integration]

PG_PORT = int(os.environ.get("FRESHKB_TEST_PG_PORT", "15432"))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster with a customers table and an orders table."""
    with postgres_server(PG_PORT) as url:
        _fill(url)
        yield url


def _fill(url: str) -> None:
    """The customers and orders tables the tests read."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "CREATE TABLE customers (customer_id text primary key, name text, tier text,"
                " updated_at timestamptz)"
            )
        )
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO customers VALUES ('C1', 'Ann', 'Summit', '2026-11-01T10:00:00Z'),"
                " ('C2', 'Bob', 'Trail', '2026-11-02T10:00:00Z')"
            )
        )
        connection.execute(
            sqlalchemy.text(
                "CREATE TABLE orders (order_id text primary key, customer_id text, total numeric,"
                " items jsonb)"
            )
        )
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO orders VALUES ('O1', 'C1', 99.5, '[{\"name\": \"Tent\"}]'),"
                " ('O2', 'C2', 10, '[]')"
            )
        )
    engine.dispose()


def test_postgres_table_records_attach_to_their_customer(postgres_url):
    source = CustomerSqlSourceConfig(
        name="crm",
        kind=SourceKind.CUSTOMERS,
        location=postgres_url,
        table="customers",
        customer_id="customer_id",
    )
    loader = loader_for(source)
    loader.precheck()
    result = loader.load()
    assert result.failures == ()
    docs = {d.key: d for d in result.documents}
    assert set(docs) == {"customers:C1", "customers:C2"}
    assert docs["customers:C1"].modified_at.isoformat().startswith("2026-11-01T10:00")
    assert "tier: Summit" in docs["customers:C1"].text


def test_postgres_query_with_nested_json_column(postgres_url):
    source = CustomerSqlSourceConfig(
        name="crm",
        kind=SourceKind.CUSTOMERS,
        location=postgres_url,
        query="SELECT * FROM orders WHERE total > 50",
        customer_id="customer_id",
        key="order_id",
    )
    (doc,) = loader_for(source).load().documents
    assert doc.customer_id == "C1"
    assert "items:\n  - name: Tent" in doc.text


def test_postgres_server_down_is_transient(postgres_url):
    down = postgres_url.replace(f":{PG_PORT}/", ":1/")
    source = CustomerSqlSourceConfig(
        name="crm",
        kind=SourceKind.CUSTOMERS,
        location=down,
        table="customers",
        customer_id="customer_id",
    )
    with pytest.raises(TransientError, match="cannot connect"):
        loader_for(source).precheck()


def test_postgres_missing_table_names_the_fix(postgres_url):
    source = CustomerSqlSourceConfig(
        name="crm",
        kind=SourceKind.CUSTOMERS,
        location=postgres_url,
        table="no_such_table",
        customer_id="customer_id",
    )
    with pytest.raises(ConfigError, match="check `table`/`query`"):
        loader_for(source).load()
