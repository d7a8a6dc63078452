"""Versioned schema migrations for PostgreSQL and ClickHouse.

Files live in infra/migrations/<engine>/NNNN_name.sql and run in version order; each engine
records what it applied in a ``schema_migrations`` table and skips it next time.

* PostgreSQL: each file runs in its own transaction together with its schema_migrations row,
  under an advisory lock (two processes migrating at once wait for each other). Statements
  are unqualified, so they land in the connection's current schema (first of search_path).
* ClickHouse has no transactions: a file is split into statements at a ``;`` that ends a line,
  and every statement must be idempotent (``IF NOT EXISTS``) so a half-applied file can rerun.
  ``{database}`` in the SQL is replaced by the target database.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tapstream.errors import ConfigError, StackError

logger = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)

PG_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

PG_LOCK_KEY = "hashtext('tapstream.migrate.' || current_schema())"

CH_LEDGER = """
CREATE TABLE IF NOT EXISTS {database}.schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version"""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``0001_foundation.sql`` is version 1, name "0001_foundation"."""

    version: int
    name: str
    sql: str


def load(files: list[tuple[str, str]]) -> list[Migration]:
    """Migrations from (file name, text) pairs in version order; StackError on a bad set."""
    found: dict[int, Migration] = {}
    for file_name, text in files:
        match = FILE_NAME.match(file_name)
        if match is None:
            raise StackError(f"migration file {file_name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise StackError(f"two migrations have version {version}: {found[version].name}, {file_name}")
        found[version] = Migration(version, file_name.removesuffix(".sql"), text)
    return [found[v] for v in sorted(found)]


def discover(engine: str) -> list[Migration]:
    """The packaged migrations of ``engine`` ("postgres" or "clickhouse")."""
    folder: Traversable = resources.files("infra").joinpath("migrations", engine)
    return load([(f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql")])


def split_statements(text: str) -> list[str]:
    """Statements of a ClickHouse file: split at ``;`` ending a line; comment-only parts dropped."""
    statements = []
    for part in STATEMENT_END.split(text):
        code = [ln for ln in part.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if code:
            statements.append(part.strip())
    return statements


def migrate_postgres(conn: psycopg.Connection[Any], migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations in the connection's current schema; the names applied.

    ``conn`` must not be inside a transaction: each migration commits on its own.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise StackError("migrate_postgres needs a connection outside any transaction: commit or "
                         "roll back first, or connect with autocommit=True")
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        return _apply_postgres(conn, discover("postgres") if migrations is None else migrations)
    except psycopg.Error as err:
        raise StackError(f"PostgreSQL migration failed: {err}") from err
    finally:
        if not conn.closed:
            conn.autocommit = was_autocommit


def _apply_postgres(conn: psycopg.Connection[Any], migrations: list[Migration]) -> list[str]:
    conn.execute(PG_LEDGER.encode())
    # One lock per schema: per-test schemas migrate in parallel, a shared one in turn.
    conn.execute(f"SELECT pg_advisory_lock({PG_LOCK_KEY})")
    try:
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for migration in migrations:
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))
            logger.info("applied PostgreSQL migration %s", migration.name)
            applied.append(migration.name)
        return applied
    finally:
        conn.execute(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")


def migrate_clickhouse(client: Client, database: str, migrations: list[Migration] | None = None) -> list[str]:
    """Create ``database`` if missing and apply its pending migrations; the names applied."""
    if not IDENTIFIER.match(database):
        raise ConfigError(f"ClickHouse database name {database!r} is not a plain identifier")
    try:
        return _apply_clickhouse(client, database, discover("clickhouse") if migrations is None else migrations)
    except ClickHouseError as err:
        raise StackError(f"ClickHouse migration of {database} failed: {err}") from err


def _apply_clickhouse(client: Client, database: str, migrations: list[Migration]) -> list[str]:
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(CH_LEDGER.format(database=database))
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied: list[str] = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in split_statements(migration.sql):
            client.command(statement.replace("{database}", database))
        client.insert(f"{database}.schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
        logger.info("applied ClickHouse migration %s to %s", migration.name, database)
        applied.append(migration.name)
    return applied
