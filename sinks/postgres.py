"""The PostgreSQL sink: enriched punches into ``attendance_records`` for HR, idempotent on event_id.

A batch lands with ``INSERT ... ON CONFLICT (event_id) DO UPDATE ... WHERE changed``, in one
transaction with the timesheets it touches, so a repeated batch changes nothing (stack-notes §3).
Its rows reach the INSERT one of two ways, by size:

- **Small batches (the live path)** go as one array per column, ``unnest``-ed by the server,
  in a pipeline: two round trips for the whole transaction. Against the temporary stage this
  took half the wall time and a third of the server's CPU for a 20-row batch (2.1 vs 4.0 ms,
  1.1 vs 2.8 ms; creating and dropping a temp table per batch is catalog work).
- **Large batches (catch-up, replay)** are COPYed (binary) into a temporary stage first: from
  about 1,000 rows on, COPY's per-row cost wins (5,000 rows: 175 vs 255 ms).

Table names are unqualified so the connection's search_path picks the schema (tests use one
per test).

Driver errors are translated here (see ``translate``): connection, resource and concurrency
failures are transient; rows the server or the driver refuses as data are permanent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from schemas.punch import EnrichedPunch
from sinks.base import WriteResult
from sinks.postgres_ledger import RESOLVE
from sinks.postgres_timesheets import Key, ask_punches, day_punches, touched_days, write_sheets
from sinks.rows import POSTGRES_COLUMNS, pivot, postgres_row
from tapstream.errors import PermanentSinkError, SinkError, TransientSinkError, first_line
from tapstream.settings import TimesheetSettings

logger = logging.getLogger(__name__)

TABLE = "attendance_records"
STAGE = "attendance_stage"

# SQLSTATE classes that mean "these rows are wrong". Anything else is about the server, the
# network or the schema, and retrying the same rows later can succeed: that includes class 42
# (undefined table or column, permission denied), since dead-lettering good rows because a
# migration is pending would be worse than waiting for it.
PERMANENT_CLASSES = {"22": "data_exception", "23": "constraint_violation"}

_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, POSTGRES_COLUMNS))
# CREATE ... AS ... WITH NO DATA copies the column types but no constraints or defaults, so the
# stage holds exactly the COPYed columns and the target fills ingested_at itself.
_CREATE_STAGE = sql.SQL(
    "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA"
).format(stage=sql.Identifier(STAGE), cols=_COLUMNS, table=sql.Identifier(TABLE))
# Reading the stage's column types lets binary COPY follow the migration instead of a second,
# hand-kept type list.
_STAGE_TYPES = sql.SQL("SELECT {cols} FROM {stage} LIMIT 0").format(cols=_COLUMNS, stage=sql.Identifier(STAGE))
_COPY = sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)").format(
    stage=sql.Identifier(STAGE), cols=_COLUMNS
)
# A re-delivered punch (same event id) changes nothing, unless what Tapstream derived for it
# changed: a corrected employee mapping or device timezone, re-applied by a replay. Those
# columns are updated; the first-seen lineage (received_at, raw, offsets) is kept.
CORRECTABLE = ("employee_id", "device_tz", "punch_time")


def _correctable(template: str) -> sql.Composed:
    """``template`` (naming the column ``{c}``) for each CORRECTABLE column, comma-separated."""
    return sql.SQL(", ").join(sql.SQL(template).format(c=sql.Identifier(c)) for c in CORRECTABLE)


def _upsert_from(source: sql.Composable) -> sql.Composed:
    """The upsert of the rows ``source`` (a SELECT of POSTGRES_COLUMNS) yields; answers one
    ``new`` flag per inserted or corrected row."""
    return sql.SQL(
        "INSERT INTO {table} AS r ({cols}) {source} ON CONFLICT (event_id) DO UPDATE SET {sets}"
        " WHERE ({old}) IS DISTINCT FROM ({new}) RETURNING (xmax = 0)"
    ).format(table=sql.Identifier(TABLE), cols=_COLUMNS, source=source, sets=_correctable("{c} = EXCLUDED.{c}"),
             old=_correctable("r.{c}"), new=_correctable("EXCLUDED.{c}"))


_MOVE = _upsert_from(sql.SQL("SELECT {cols} FROM {stage}").format(cols=_COLUMNS, stage=sql.Identifier(STAGE)))
# One array per column, dumped binary (%b) with the type psycopg gives the Python values (uuid,
# text, timestamp, timestamptz, int2/4/8); the INSERT's assignment casts fit them to the columns,
# so the migration stays the one place column types are written.
_INSERT = _upsert_from(sql.SQL("SELECT * FROM unnest({arrays})").format(
    arrays=sql.SQL(", ").join(sql.SQL("%b") for _ in POSTGRES_COLUMNS)))
# Rows about to move to another employee: that employee's old days need recomputing too.
_REASSIGNED = sql.SQL(
    "SELECT r.employee_id, r.device_time FROM {table} r JOIN unnest(%b, %b) AS s(event_id, employee_id)"
    " USING (event_id) WHERE r.employee_id IS DISTINCT FROM s.employee_id"
).format(table=sql.Identifier(TABLE))
# From this many rows on, a batch is COPYed through the stage (see the module docstring).
COPY_FROM_ROWS = 1000


class ConnectionSource(Protocol):
    """What the sink needs from a pool: a connection lent for the length of a ``with`` block."""

    def connection(self, timeout: float | None = None) -> AbstractContextManager[psycopg.Connection[Any]]:
        ...

    def close(self, timeout: float = 5.0) -> None:
        ...


def open_pool(dsn: str, max_size: int, *, connect_timeout_s: int = 5, acquire_timeout_s: float = 10.0) -> ConnectionPool:
    """Open a connection pool and wait for its first connection; raise TransientSinkError if none.

    connect_timeout_s bounds one connection attempt (libpq rounds values below 2 up to 2);
    acquire_timeout_s bounds how long a write waits for a connection before failing transient.
    Every connection is checked before it is lent, so one killed by a server restart is
    replaced instead of failing the next batch.
    """
    pool: ConnectionPool = ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=acquire_timeout_s,
        check=ConnectionPool.check_connection,
        kwargs={"connect_timeout": connect_timeout_s},
        name="tapstream-postgres",
    )
    try:
        # The pool retries a refused connection with backoff: allow about two attempts.
        pool.open(wait=True, timeout=max(connect_timeout_s, 1) * 2)
    except psycopg.Error as exc:
        pool.close()
        raise TransientSinkError(f"postgres unreachable: {exc}") from exc
    return pool


class PostgresSink:
    """Writes batches to attendance_records through a ready pool, which it closes on close()."""

    name = "postgres"

    def __init__(self, pool: ConnectionSource, timesheets: TimesheetSettings | None = None,
                 copy_from_rows: int = COPY_FROM_ROWS) -> None:
        self._pool = pool
        self._timesheets = timesheets  # None: no timesheets (e.g. a sink test of the records only)
        self._copy_from_rows = copy_from_rows

    def write_batch(self, rows: Sequence[EnrichedPunch]) -> WriteResult:
        """Write all rows in one transaction; rows already present (same event_id) are skipped
        unless their employee, zone or UTC time was corrected (then those are updated)."""
        if not rows:
            return WriteResult(0, 0)
        started = time.perf_counter()
        try:
            inserted = self._write(_last_per_event(rows))
        except (psycopg.Error, UnicodeEncodeError) as exc:
            raise translate(exc) from exc
        logger.info(
            "postgres: wrote batch rows=%d new=%d ms=%.1f",
            len(rows), inserted, (time.perf_counter() - started) * 1000,
        )
        return WriteResult(offered=len(rows), inserted=inserted)

    def _write(self, batch: Sequence[EnrichedPunch]) -> int:
        values = [postgres_row(row) for row in batch]
        with self._pool.connection() as conn:
            if len(values) < self._copy_from_rows:
                # Pipeline mode: BEGIN and everything up to the moved rows in one round trip,
                # the timesheets and COMMIT in the second. (COPY cannot run in a pipeline.)
                with conn.pipeline(), conn.transaction():
                    return self._move(conn, batch, _INSERT, pivot(values))
            with conn.transaction():
                _stage(conn, values)
                return self._move(conn, batch, _MOVE, [])

    def _move(self, conn: psycopg.Connection[Any], batch: Sequence[EnrichedPunch], upsert: sql.Composed,
              params: Sequence[object]) -> int:
        """Upsert the batch, in one round trip with what reads around it: the rows changing
        employee (read before), the parked punches now resolved, and (read after) the punches
        of every day the batch touched; then rebuild those days. Returns the rows inserted."""
        ids = [row.punch.event_id for row in batch]
        rules = self._timesheets
        touched: set[Key] = set()
        if rules is not None:
            touched = touched_days(((r.employee_id, r.punch.device_time) for r in batch), rules)
        with conn.cursor() as cur, conn.cursor() as reassigned, conn.cursor() as moved, conn.cursor() as days:
            with conn.pipeline():
                if rules is not None:
                    reassigned.execute(_REASSIGNED, (ids, [row.employee_id for row in batch]))
                moved.execute(upsert, params)
                cur.execute(RESOLVE, (ids,))  # parked punches now recorded (a re-match) leave the open list
                if rules is not None and touched:
                    ask_punches(days, touched, rules)
            changed = [bool(new) for (new,) in moved.fetchall()]
            if rules is not None:
                # same transaction: records and their days land together
                self._recompute(cur, days, touched, reassigned.fetchall())
        if any(not new for new in changed):
            logger.info("postgres: corrected %d existing rows", changed.count(False))
        return changed.count(True)

    def _recompute(self, cur: psycopg.Cursor[Any], days: psycopg.Cursor[Any], touched: set[Key],
                   previous: list[tuple[str, datetime]]) -> None:
        """Rebuild the touched days, and the old days of rows that moved to another employee."""
        assert self._timesheets is not None
        punches, zones = day_punches(days, self._timesheets) if touched else ({}, {})
        vacated = touched_days(previous, self._timesheets) - touched
        if vacated:
            ask_punches(cur, vacated, self._timesheets)
            more, more_zones = day_punches(cur, self._timesheets)
            punches.update(more)
            zones.update(more_zones)
        write_sheets(cur, self._timesheets, touched | vacated, punches, zones)

    def close(self) -> None:
        """Close the pool and its connections; safe to call twice."""
        self._pool.close()


def _last_per_event(rows: Sequence[EnrichedPunch]) -> list[EnrichedPunch]:
    # ON CONFLICT DO UPDATE refuses to touch a row twice in one statement: one row per event
    # id, the latest (the stream already drops repeats; this keeps the sink safe on its own).
    return list({row.punch.event_id: row for row in rows}.values())


def _stage(conn: psycopg.Connection[Any], values: Sequence[tuple[object, ...]]) -> None:
    """COPY the rows (binary) into a temporary stage that lives until the commit."""
    with conn.cursor() as cur:
        with conn.pipeline():
            cur.execute(_CREATE_STAGE)
            cur.execute(_STAGE_TYPES)
        type_oids = [column.type_code for column in cur.description or ()]
        with cur.copy(_COPY) as copy:
            copy.set_types(type_oids)
            for row in values:
                copy.write_row(row)


def translate(exc: BaseException) -> SinkError:
    """Map a driver exception to TransientSinkError or PermanentSinkError."""
    if isinstance(exc, UnicodeEncodeError):
        # A lone surrogate (say from a mangled device string) can never be sent as UTF-8.
        return PermanentSinkError("unencodable_text", f"postgres: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is not None:
        reason = PERMANENT_CLASSES.get(sqlstate[:2])
        if reason is not None:
            return PermanentSinkError(reason, f"postgres {sqlstate}: {first_line(exc)}")
        return TransientSinkError(f"postgres {sqlstate}: {first_line(exc)}")
    if isinstance(exc, psycopg.DataError):
        # Raised by the driver itself before the server sees the row, e.g. a NUL byte in text.
        return PermanentSinkError("data_exception", f"postgres: {first_line(exc)}")
    return TransientSinkError(f"postgres unavailable: {first_line(exc)}")
