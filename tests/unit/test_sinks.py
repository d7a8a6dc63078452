"""Sinks without services: row shaping, batch tokens, error mapping, empty batches (fakes only)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import clickhouse_connect
import psycopg
import psycopg.errors
import pytest
from clickhouse_connect.driver import exceptions as ch_errors
from psycopg_pool import PoolTimeout

from schemas.punch import EnrichedPunch
from tests.factories import enriched
from sinks import clickhouse as ch_sink
from sinks import postgres as pg_sink
from sinks.base import WriteResult
from sinks.clickhouse import ClickHouseSink, open_client
from sinks.postgres import PostgresSink
from sinks.rows import (
    CLICKHOUSE_COLUMNS,
    POSTGRES_COLUMNS,
    PUNCH_COLUMNS,
    clickhouse_row,
    content_fingerprint,
    pivot,
    postgres_row,
)
from tapstream.errors import ConfigError, PermanentSinkError, TransientSinkError

MIGRATIONS = Path(__file__).resolve().parents[2] / "infra" / "migrations"


def punch(n: int = 0, *, employee_id: str = "E-1", user_code: str = "1001") -> EnrichedPunch:
    return enriched(
        n, employee_id=employee_id, user_code=user_code, serial="CQZ7232060123", work_code="7",
        raw=f"{user_code}\t{datetime(2026, 3, 1, 8, 0, 0) + timedelta(minutes=n)}\t{n % 2}\t15",
        received_at=datetime(2026, 3, 1, 2, 5, tzinfo=UTC), partition=3, offset=100 + n,
    )


# --- row shaping -------------------------------------------------------------------------


def test_postgres_row_follows_its_column_list() -> None:
    row = punch()
    values = dict(zip(POSTGRES_COLUMNS, postgres_row(row), strict=True))
    assert values["event_id"] == row.punch.event_id
    assert values["employee_id"] == "E-1"
    assert values["device_time"] == datetime(2026, 3, 1, 8, 0) and values["device_time"].tzinfo is None
    assert values["punch_time"] == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert values["source"] == "push" and type(values["source"]) is str
    assert (values["source_partition"], values["source_offset"], values["raw"]) == (3, 100, row.punch.raw)


def test_clickhouse_row_tags_the_wall_clock_utc_without_shifting_it() -> None:
    values = dict(zip(CLICKHOUSE_COLUMNS, clickhouse_row(punch()), strict=True))
    assert values["device_time"] == datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    assert "raw" not in values


@pytest.mark.parametrize(("table", "columns"), [("postgres", POSTGRES_COLUMNS), ("clickhouse", CLICKHOUSE_COLUMNS)])
def test_every_written_column_exists_in_the_migration(table: str, columns: tuple[str, ...]) -> None:
    ddl = (MIGRATIONS / table / "0001_foundation.sql").read_text()
    found = re.search(r"CREATE TABLE IF NOT EXISTS \S*attendance_\w+\s*\((.*?)\n\)", ddl, flags=re.DOTALL)
    assert found is not None
    body = found.group(1)
    declared = set(re.findall(r"^\s*([a-z_]+)\s+[A-Za-z]", body, flags=re.MULTILINE))
    assert set(columns) <= declared
    assert set(PUNCH_COLUMNS) <= set(columns)


def test_pivot_turns_rows_into_columns() -> None:
    assert pivot([(1, "a"), (2, "b")]) == [[1, 2], ["a", "b"]]
    assert pivot([]) == []


def test_fingerprint_ignores_order_and_repeats() -> None:
    rows = [clickhouse_row(punch(n)) for n in range(5)]
    assert content_fingerprint(rows) == content_fingerprint(list(reversed(rows)))
    assert content_fingerprint(rows) == content_fingerprint(rows + rows[:2])


def test_fingerprint_changes_when_a_replay_corrects_a_value() -> None:
    before = [clickhouse_row(punch(n)) for n in range(3)]
    after = [clickhouse_row(punch(n, employee_id="E-2" if n == 1 else "E-1")) for n in range(3)]
    assert content_fingerprint(before) != content_fingerprint(after)


def test_fingerprint_does_not_depend_on_the_utc_tzinfo_object() -> None:
    # A decoder may hand back timezone.utc or ZoneInfo("UTC") for the same instant.
    row = punch()
    other = row.model_copy(
        update={"punch": row.punch.model_copy(update={"received_at": row.punch.received_at.replace(tzinfo=ZoneInfo("UTC"))})}
    )
    assert row.punch.received_at.tzinfo is not other.punch.received_at.tzinfo
    assert content_fingerprint([clickhouse_row(row)]) == content_fingerprint([clickhouse_row(other)])


# --- PostgreSQL: fakes and error mapping ---------------------------------------------------


class FakeCopy:
    def __init__(self, fail: BaseException | None) -> None:
        self.rows: list[tuple[object, ...]] = []
        self.fail = fail

    def set_types(self, types: list[int]) -> None:
        self.types = types

    def write_row(self, row: tuple[object, ...]) -> None:
        if self.fail is not None:
            raise self.fail
        self.rows.append(row)


class FakeCursor:
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.description = [type("Col", (), {"type_code": 25})() for _ in POSTGRES_COLUMNS]
        self.rowcount = -1

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, query: object, params: Sequence[object] = ()) -> FakeCursor:
        statement = str(query)
        if "INSERT INTO" in statement and "unnest" in statement and self.pool.write_fails is not None:
            raise self.pool.write_fails  # the rows' values go with the statement
        self.pool.statements.append(statement)
        self.pool.params.append(params)
        self.rowcount = self.pool.rowcount
        return self

    def fetchall(self) -> list[tuple[bool]]:
        # RETURNING (xmax = 0) of the move: True per inserted row (the fake inserts rowcount rows)
        return [(True,)] * self.pool.rowcount

    @contextmanager
    def copy(self, statement: object) -> Iterator[FakeCopy]:
        self.pool.copy = FakeCopy(self.pool.write_fails)
        yield self.pool.copy


class FakeConnection:
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    @contextmanager
    def pipeline(self) -> Iterator[None]:  # statements run at once here: nothing to batch
        yield

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.pool)


class FakePool:
    """Stands in for psycopg_pool.ConnectionPool; fails as told."""

    def __init__(self, *, lend_fails: BaseException | None = None, write_fails: BaseException | None = None) -> None:
        self.lend_fails = lend_fails
        self.write_fails = write_fails  # raised where the rows' values are sent (COPY or arrays)
        self.lent = 0
        self.closed = 0
        self.rowcount = 0
        self.statements: list[str] = []
        self.params: list[Sequence[object]] = []
        self.copy: FakeCopy | None = None

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        self.lent += 1
        if self.lend_fails is not None:
            raise self.lend_fails
        yield FakeConnection(self)

    def close(self, timeout: float = 5.0) -> None:
        self.closed += 1


def test_postgres_empty_batch_does_not_touch_the_pool() -> None:
    pool = FakePool(lend_fails=psycopg.OperationalError("down"))
    assert PostgresSink(pool).write_batch([]) == WriteResult(0, 0)
    assert pool.lent == 0


def test_postgres_small_batch_goes_as_one_array_per_column() -> None:
    pool = FakePool()
    pool.rowcount = 2
    rows = [punch(0), punch(1)]
    assert PostgresSink(pool).write_batch(rows) == WriteResult(offered=2, inserted=2)
    assert pool.lent == 1 and pool.copy is None
    upsert = next(n for n, statement in enumerate(pool.statements) if "unnest" in statement)
    assert [list(column) for column in pool.params[upsert]] == pivot([postgres_row(row) for row in rows])
    _moved_and_resolved(pool.statements, pool.params, rows)


def test_postgres_large_batch_is_copied_through_the_stage() -> None:
    pool = FakePool()
    pool.rowcount = 2
    rows = [punch(0), punch(1)]
    assert PostgresSink(pool, copy_from_rows=2).write_batch(rows) == WriteResult(offered=2, inserted=2)
    assert pool.lent == 1
    assert pool.copy is not None and pool.copy.rows == [postgres_row(row) for row in rows]
    assert "ON COMMIT DROP" in pool.statements[0]
    assert "attendance_stage" in pool.statements[-2]  # the upsert reads the stage
    _moved_and_resolved(pool.statements, pool.params, rows)


def _moved_and_resolved(statements: list[str], params: list[Sequence[object]], rows: list[EnrichedPunch]) -> None:
    move, resolve = statements[-2:]
    # a repeat changes nothing unless a derived column was corrected (employee, zone, UTC time)
    assert "ON CONFLICT (event_id) DO UPDATE" in move
    assert "IS DISTINCT FROM" in move
    # and parked punches now recorded (re-matched) are resolved in the same transaction
    assert "UPDATE unmatched_punches" in resolve
    assert params[-1] == ([row.punch.event_id for row in rows],)
    assert not any("public." in statement for statement in statements)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("connection already closed"),
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.TooManyConnections("too many clients already"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.DiskFull("could not extend file"),
        # The store is not ready (migration pending): the rows are fine, so never dead-letter.
        psycopg.errors.UndefinedTable('relation "attendance_records" does not exist'),
    ],
    ids=lambda error: type(error).__name__,
)
def test_postgres_unavailability_is_transient(error: psycopg.Error) -> None:
    with pytest.raises(TransientSinkError) as raised:
        PostgresSink(FakePool(lend_fails=error)).write_batch([punch()])
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), "data_exception"),
        (psycopg.errors.CharacterNotInRepertoire("invalid byte sequence for encoding"), "data_exception"),
        (psycopg.errors.NumericValueOutOfRange("smallint out of range"), "data_exception"),
        (psycopg.errors.NotNullViolation('null value in column "raw"'), "constraint_violation"),
        (UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"), "unencodable_text"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value,
)
@pytest.mark.parametrize("copy_from", [1, 1000], ids=["copy-stage", "arrays"])
def test_postgres_rejected_data_is_permanent(error: BaseException, reason: str, copy_from: int) -> None:
    with pytest.raises(PermanentSinkError) as raised:
        PostgresSink(FakePool(write_fails=error), copy_from_rows=copy_from).write_batch([punch()])
    assert raised.value.reason == reason
    assert raised.value.__cause__ is error


def test_postgres_close_closes_the_pool_and_is_repeatable() -> None:
    pool = FakePool()
    sink = PostgresSink(pool)
    sink.close()
    sink.close()
    assert pool.closed == 2


def test_postgres_translate_keeps_the_sqlstate_in_the_detail() -> None:
    error = pg_sink.translate(psycopg.errors.NumericValueOutOfRange("smallint out of range\nCONTEXT: x"))
    assert isinstance(error, PermanentSinkError)
    assert error.detail == "postgres 22003: smallint out of range"


# --- ClickHouse: fakes and error mapping ---------------------------------------------------


class FakeClient:
    """Stands in for a clickhouse_connect Client; records inserts, fails as told."""

    def __init__(self, fails: BaseException | None = None) -> None:
        self.fails = fails
        self.inserts: list[dict[str, Any]] = []
        self.closed = 0

    def insert(self, table: str, data: list[list[object]], **kwargs: Any) -> None:
        if self.fails is not None:
            raise self.fails
        self.inserts.append({"table": table, "data": data, **kwargs})

    def close(self) -> None:
        self.closed += 1


def ch(client: FakeClient) -> ClickHouseSink:
    return ClickHouseSink(client, "tapstream_test")  # type: ignore[arg-type]  # a fake client


def test_clickhouse_empty_batch_sends_nothing() -> None:
    client = FakeClient()
    assert ch(client).write_batch([]) == WriteResult(0, 0)
    assert client.inserts == []


def test_clickhouse_batch_is_one_column_oriented_insert_with_a_token() -> None:
    client = FakeClient()
    rows = [punch(n) for n in range(3)]
    assert ch(client).write_batch(rows) == WriteResult(offered=3, inserted=3)
    (insert,) = client.inserts
    assert insert["table"] == "attendance_events" and insert["database"] == "tapstream_test"
    assert insert["column_oriented"] is True
    assert insert["column_names"] == CLICKHOUSE_COLUMNS
    assert len(insert["data"]) == len(CLICKHOUSE_COLUMNS) and len(insert["data"][0]) == 3
    assert re.fullmatch(r"[0-9a-f]{64}", insert["settings"]["insert_deduplication_token"])


def test_clickhouse_retry_of_the_same_rows_carries_the_same_token() -> None:
    client = FakeClient()
    sink = ch(client)
    rows = [punch(n) for n in range(4)]
    sink.write_batch(rows)
    sink.write_batch(list(reversed(rows)))
    sink.write_batch(rows[:2])
    first, reordered, smaller = (insert["settings"]["insert_deduplication_token"] for insert in client.inserts)
    assert first == reordered != smaller


@pytest.mark.parametrize(
    "error",
    [
        ch_errors.OperationalError("Error HTTPConnectionPool: Connection refused"),
        ch_errors.DatabaseError("Code: 252. Too many parts (300). (TOO_MANY_PARTS)", code=252),
        ch_errors.DatabaseError("Code: 241. Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)", code=241),
        ch_errors.DatabaseError("Code: 159. Timeout exceeded. (TIMEOUT_EXCEEDED)", code=159),
        ch_errors.DatabaseError("Code: 60. Table t.attendance_events does not exist. (UNKNOWN_TABLE)", code=60),
        ch_errors.ProgrammingError("The client has been closed"),
    ],
    ids=lambda error: str(error)[:24],
)
def test_clickhouse_unavailability_is_transient(error: BaseException) -> None:
    with pytest.raises(TransientSinkError) as raised:
        ch(FakeClient(fails=error)).write_batch([punch()])
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ch_errors.DataError("Unable to create native array for column `device_time`: error"), "data_exception"),
        (ch_errors.DatabaseError("Code: 53. Type mismatch. (TYPE_MISMATCH)", code=53), "data_exception"),
        (ch_errors.DatabaseError("Code: 41. Cannot parse DateTime. (CANNOT_PARSE_DATETIME)", code=41), "data_exception"),
        (UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"), "unencodable_text"),
    ],
    ids=lambda value: str(value)[:24],
)
def test_clickhouse_rejected_data_is_permanent(error: BaseException, reason: str) -> None:
    with pytest.raises(PermanentSinkError) as raised:
        ch(FakeClient(fails=error)).write_batch([punch()])
    assert raised.value.reason == reason
    assert raised.value.__cause__ is error


def test_clickhouse_close_is_repeatable() -> None:
    client = FakeClient()
    sink = ch(client)
    sink.close()
    sink.close()
    assert client.closed == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ch_errors.ProgrammingError(
                "Unable to open the chdb engine at '/b': EmbeddedServer already initialized with path '/a'"
            ),
            ConfigError,
        ),
        (ch_errors.ProgrammingError("Cannot lock file /a/status. Another server instance is running"), TransientSinkError),
        (ch_errors.OperationalError("Connection refused"), TransientSinkError),
    ],
    ids=["other-chdb-path", "store-locked", "refused"],
)
def test_open_client_maps_failures(monkeypatch: pytest.MonkeyPatch, error: Exception, expected: type[Exception]) -> None:
    def refuse(**kwargs: object) -> None:
        raise error

    monkeypatch.setattr(clickhouse_connect, "get_client", refuse)
    with pytest.raises(expected) as raised:
        open_client("chdb:///nowhere", "tapstream")
    assert raised.value.__cause__ is error


def test_clickhouse_translate_names_the_server_code() -> None:
    error = ch_sink.translate(ch_errors.DatabaseError("Code: 376. Cannot parse uuid zz\nmore", code=376))
    assert isinstance(error, PermanentSinkError)
    assert error.detail.startswith("clickhouse CANNOT_PARSE_UUID: Code: 376")
