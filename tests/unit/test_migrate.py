"""Migration files: naming, ordering, statement splitting, the ClickHouse runner on a fake client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from infra.migrate import Migration, discover, load, migrate_clickhouse, split_statements
from tapstream.errors import ConfigError, StackError


def test_load_orders_by_version_not_by_listing() -> None:
    found = load([("0010_later.sql", "b"), ("0002_second.sql", "a"), ("0001_first.sql", "c")])
    assert [(m.version, m.name) for m in found] == [(1, "0001_first"), (2, "0002_second"), (10, "0010_later")]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_x.txt"])
def test_load_rejects_badly_named_files(name: str) -> None:
    with pytest.raises(StackError, match="NNNN_name.sql"):
        load([(name, "")])


def test_load_rejects_duplicate_versions() -> None:
    with pytest.raises(StackError, match="two migrations have version 1"):
        load([("0001_a.sql", ""), ("0001_b.sql", "")])


def test_packaged_migrations_are_found() -> None:
    assert [m.name for m in discover("postgres")][0] == "0001_foundation"
    assert [m.name for m in discover("clickhouse")][0] == "0001_foundation"


def test_split_at_semicolons_that_end_a_line() -> None:
    text = "-- header;\nCREATE TABLE a (x String DEFAULT ';');\n\nCREATE TABLE b\n(y Int8) ;  \n-- trailer\n"
    assert split_statements(text) == ["CREATE TABLE a (x String DEFAULT ';')", "CREATE TABLE b\n(y Int8)"]


def test_packaged_clickhouse_foundation_is_one_statement() -> None:
    (foundation,) = [m for m in discover("clickhouse") if m.version == 1]
    statements = split_statements(foundation.sql)
    assert len(statements) == 1
    assert "{database}.attendance_events" in statements[0]


@dataclass
class FakeResult:
    result_rows: list[tuple[Any, ...]]


@dataclass
class FakeClickHouse:
    """Records commands; remembers inserted ledger rows like the real table would."""

    commands: list[str] = field(default_factory=list)
    ledger: list[list[Any]] = field(default_factory=list)

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def query(self, sql: str) -> FakeResult:
        assert "schema_migrations" in sql
        return FakeResult([(row[0],) for row in self.ledger])

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        assert table == "analytics.schema_migrations"
        self.ledger.extend(rows)


MIGRATIONS = [
    Migration(1, "0001_one", "CREATE TABLE IF NOT EXISTS {database}.a (x Int8) ENGINE = Memory;\n"),
    Migration(2, "0002_two", "CREATE TABLE IF NOT EXISTS {database}.b (x Int8) ENGINE = Memory;\n"
                             "CREATE TABLE IF NOT EXISTS {database}.c (x Int8) ENGINE = Memory;\n"),
]


def test_migrate_clickhouse_applies_in_order_then_nothing() -> None:
    client: Any = FakeClickHouse()  # stands in for a clickhouse_connect Client
    assert migrate_clickhouse(client, "analytics", MIGRATIONS) == ["0001_one", "0002_two"]
    assert client.commands[0] == "CREATE DATABASE IF NOT EXISTS analytics"
    assert client.commands[-3:] == [
        "CREATE TABLE IF NOT EXISTS analytics.a (x Int8) ENGINE = Memory",
        "CREATE TABLE IF NOT EXISTS analytics.b (x Int8) ENGINE = Memory",
        "CREATE TABLE IF NOT EXISTS analytics.c (x Int8) ENGINE = Memory",
    ]
    assert migrate_clickhouse(client, "analytics", MIGRATIONS) == []
    assert client.ledger == [[1, "0001_one"], [2, "0002_two"]]


def test_migrate_clickhouse_refuses_odd_database_names() -> None:
    with pytest.raises(ConfigError):
        fake: Any = FakeClickHouse()
        migrate_clickhouse(fake, "x; DROP", MIGRATIONS)


def test_a_failing_clickhouse_statement_is_a_stack_error() -> None:
    class Failing(FakeClickHouse):
        def command(self, sql: str) -> None:
            if "broken" in sql:
                raise DatabaseError("Code: 62. Syntax error")
            super().command(sql)

    client: Any = Failing()
    with pytest.raises(StackError, match="ClickHouse migration of analytics failed: Code: 62"):
        migrate_clickhouse(client, "analytics", [Migration(1, "0001_bad", "broken;\n")])
    assert client.ledger == []  # not recorded: the next run retries it
