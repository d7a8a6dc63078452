"""`tapstream checksums`: a row count and an order-independent checksum per sink table.

Two runs that stored the same facts give the same checksums, whatever order the rows arrived
in: each row is hashed in the database and the hashes are summed (modulo 2^64, two halves).
Columns that legitimately differ between a live run and a rebuild (``replay``) are left out:

* ``ingested_at``, ``computed_at`` — when the store wrote the row;
* ``source_partition``, ``source_offset`` — lineage: a punch parked as unknown and re-sent once
  its mapping arrived points at the re-sent message in the live run, at the original in a rebuild.

Every other column counts, new ones included (the column list is read from the catalogue).
The embedded ClickHouse store admits one process: this fails clearly while the worker holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from psycopg import sql

from sinks.clickhouse import open_client
from tapstream.errors import TapstreamError, TransientSinkError
from tapstream.settings import Settings

EXCLUDED = frozenset({"ingested_at", "computed_at", "source_partition", "source_offset"})
POSTGRES_TABLES = ("attendance_records", "timesheets")
CLICKHOUSE_TABLE = "attendance_events"
_MOD = 2**64

_PG_COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position
"""
# Row text depends on these session settings (time zone above all): pin them.
_PG_SESSION = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'"
_PG_SUM = (
    "SELECT count(*), coalesce(sum(('x' || left(h, 16))::bit(64)::bigint), 0),"
    " coalesce(sum(('x' || right(h, 16))::bit(64)::bigint), 0)"
    " FROM (SELECT md5(ROW({cols})::text) AS h FROM {table}) t"
)


@dataclass(frozen=True)
class TableChecksum:
    store: str
    table: str
    rows: int
    checksum: str

    @property
    def name(self) -> str:
        return f"{self.store}.{self.table}"


def checksum_columns(columns: Sequence[str]) -> list[str]:
    """The columns that go into a checksum, in table order."""
    return [c for c in columns if c not in EXCLUDED]


def digest(*sums: int) -> str:
    """Hex digest of 64-bit hash sums (signed or unsigned, any size: taken modulo 2^64)."""
    return "".join(f"{int(s) % _MOD:016x}" for s in sums)


def table_checksums(settings: Settings) -> list[TableChecksum]:
    """Checksums of every configured sink's tables."""
    out = []
    if "postgres" in settings.worker.sinks:
        out += postgres_checksums(settings.postgres.effective_dsn())
    if "clickhouse" in settings.worker.sinks:
        out.append(clickhouse_checksum(settings.clickhouse_dsn(), settings.clickhouse.database))
    return out


def postgres_checksums(dsn: str) -> list[TableChecksum]:
    """attendance_records and timesheets of the connection's current schema."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            conn.execute(_PG_SESSION)
            return [_postgres_table(conn, table) for table in POSTGRES_TABLES]
    except psycopg.Error as exc:
        raise TapstreamError(f"cannot checksum PostgreSQL: {exc}") from exc


def _postgres_table(conn: psycopg.Connection[Any], table: str) -> TableChecksum:
    columns = checksum_columns([name for (name,) in conn.execute(_PG_COLUMNS, (table,))])
    if not columns:
        raise TapstreamError(f"PostgreSQL table {table} not found in the current schema: run the worker once")
    query = sql.SQL(_PG_SUM).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)), table=sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    assert row is not None  # an aggregate always returns a row
    return TableChecksum("postgres", table, int(row[0]), digest(row[1], row[2]))


def clickhouse_checksum(dsn: str, database: str) -> TableChecksum:
    """attendance_events FINAL (one row per event id: the latest insert)."""
    try:
        client = open_client(dsn, database)
    except TransientSinkError as exc:
        hint = " (the worker, or another tapstream command, holds the embedded store: stop it first)"
        raise TapstreamError(f"cannot open ClickHouse: {exc}{hint if dsn.startswith('chdb:') else ''}") from exc
    try:
        return _clickhouse_table(client, database)
    except ClickHouseError as exc:
        raise TapstreamError(f"cannot checksum ClickHouse: {exc}") from exc
    finally:
        client.close()


def _clickhouse_table(client: Client, database: str) -> TableChecksum:
    names = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        parameters={"db": database, "t": CLICKHOUSE_TABLE},
    ).result_rows
    columns = checksum_columns([name for (name,) in names])
    if not columns:
        raise TapstreamError(f"ClickHouse table {database}.{CLICKHOUSE_TABLE} not found: run the worker once")
    cols = ", ".join(map(quote_identifier, columns))
    # sum() of UInt64 wraps around: exactly the modulo-2^64 sum wanted
    rows, city, sip = client.query(
        f"SELECT count(), sum(cityHash64({cols})), sum(sipHash64({cols}))"
        f" FROM {quote_identifier(database)}.{CLICKHOUSE_TABLE} FINAL"
    ).result_rows[0]
    return TableChecksum("clickhouse", CLICKHOUSE_TABLE, int(rows), digest(city, sip))
