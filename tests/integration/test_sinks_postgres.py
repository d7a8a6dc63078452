"""PostgreSQL sink against a real server, one fresh schema per test (search_path, no ``public.``)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from infra.migrate import migrate_postgres
from infra.postgres_server import PostgresServer
from schemas.codec import encode
from schemas.punch import EnrichedPunch
from sinks.base import WriteResult
from sinks.postgres import PostgresSink, open_pool
from sinks.postgres_ledger import ParkedMessage, write_parked
from tapstream.errors import PermanentSinkError, TransientSinkError
from tapstream.settings import TimesheetSettings
from tests.factories import deliver, enriched

if TYPE_CHECKING:
    from conftest import PgSchema

pytestmark = pytest.mark.integration


def punch(n: int, *, employee_id: str = "E-1", user_code: str = "1001", raw: str | None = None) -> EnrichedPunch:
    return enriched(n, employee_id=employee_id, user_code=user_code, raw=raw, partition=4, offset=1000 + n)


def punches(start: int, stop: int) -> list[EnrichedPunch]:
    return [punch(n) for n in range(start, stop)]


@pytest.fixture
def pool(pg_schema: PgSchema) -> Iterator[ConnectionPool]:
    pool = open_pool(pg_schema.dsn, max_size=2, connect_timeout_s=2, acquire_timeout_s=3.0)
    yield pool
    pool.close()


@pytest.fixture(params=[1, 10**6], ids=["copy-stage", "arrays"])
def copy_from(request: pytest.FixtureRequest) -> int:
    """Every test runs both ways rows reach the upsert: COPYed through the stage, and unnest-ed arrays."""
    return int(request.param)


@pytest.fixture
def sink(pool: ConnectionPool, copy_from: int) -> PostgresSink:
    return PostgresSink(pool, copy_from_rows=copy_from)


def count(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM attendance_records").fetchone()
    assert row is not None
    return int(row[0])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_rewriting_a_batch_changes_nothing(sink: PostgresSink, pool: ConnectionPool) -> None:
    rows = punches(0, 500)
    assert sink.write_batch(rows) == WriteResult(500, 500)
    assert sink.write_batch(rows) == WriteResult(500, 0)
    assert count(pool) == 500


def test_overlapping_batches_insert_only_new_rows(sink: PostgresSink, pool: ConnectionPool) -> None:
    assert sink.write_batch(punches(0, 100)).inserted == 100
    assert sink.write_batch(punches(50, 150)).inserted == 50
    # A batch repeating a row inside itself is fine too (the second copy is a conflict).
    assert sink.write_batch([*punches(150, 160), *punches(150, 160)]) == WriteResult(20, 10)
    assert count(pool) == 160


def test_data_reads_back_as_written(sink: PostgresSink, pool: ConnectionPool) -> None:
    row = punch(0, employee_id="Zoë Ñúñez 社員", user_code="PIN-é7", raw="PIN-é7\t2026-03-01 08:00:00\t0\t15 ✓")
    sink.write_batch([row])
    with pool.connection() as conn:
        stored = conn.execute(
            "SELECT event_id, user_code, employee_id, device_time, punch_time, received_at, device_tz,"
            " punch_state, verify_mode, work_code, source, raw, source_partition, source_offset,"
            " ingested_at IS NOT NULL FROM attendance_records"
        ).fetchall()
    assert stored == [
        (
            row.punch.event_id,
            "PIN-é7",
            "Zoë Ñúñez 社員",
            datetime(2026, 3, 1, 8, 0),  # naive: the device's wall clock, untouched
            datetime(2026, 3, 1, 2, 0, tzinfo=UTC),
            datetime(2026, 3, 1, 2, 5, 7, 123456, tzinfo=UTC),
            "Asia/Dhaka",
            0,
            15,
            "",
            "push",
            "PIN-é7\t2026-03-01 08:00:00\t0\t15 ✓",
            4,
            1000,
            True,
        )
    ]
    assert stored[0][3].tzinfo is None


def test_a_rejected_row_fails_the_batch_whole_and_is_isolated_by_the_worker_delivery(
    sink: PostgresSink, pool: ConnectionPool
) -> None:
    bad = punch(99, raw="garbled\x00record")  # PostgreSQL text cannot hold NUL
    batch = [*punches(0, 3), bad, *punches(3, 5)]
    with pytest.raises(PermanentSinkError) as raised:
        sink.write_batch(batch)
    assert raised.value.reason == "data_exception"
    assert count(pool) == 0  # nothing of the failed batch landed

    outcome = deliver(sink, batch)
    rejected = [row for row, _ in outcome.rejected]
    assert rejected == [bad]
    assert count(pool) == 5


def test_recording_a_parked_punch_resolves_it_and_only_it(sink: PostgresSink, pool: ConnectionPool) -> None:
    parked, other = punch(0, user_code="77"), punch(1, user_code="78")
    with pool.connection() as conn, conn.cursor() as cur:
        write_parked(cur, [ParkedMessage(0, n, encode(row.punch), "unknown_user") for n, row in enumerate((parked, other))])
    sink.write_batch([parked, punch(2)])
    with pool.connection() as conn:
        open_rows = conn.execute("SELECT event_id FROM unmatched_punches WHERE resolved_at IS NULL").fetchall()
    assert open_rows == [(other.punch.event_id,)]


def test_a_killed_connection_is_replaced_before_the_next_batch(
    sink: PostgresSink, pool: ConnectionPool, pg_schema: PgSchema
) -> None:
    # What a server restart does to idle pooled connections: their server side is gone.
    sink.write_batch(punches(0, 10))
    with pool.connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(pg_schema.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert sink.write_batch(punches(10, 20)) == WriteResult(10, 10)
    assert count(pool) == 20


def test_an_unreachable_server_is_transient_when_opening() -> None:
    with pytest.raises(TransientSinkError):
        open_pool(f"postgresql://tapstream@127.0.0.1:{closed_port()}/tapstream", max_size=1, connect_timeout_s=1)


def test_a_server_outage_is_transient_then_recovers_without_duplicates(
    private_postgres: Callable[[], PostgresServer], copy_from: int
) -> None:
    server = private_postgres()
    with psycopg.connect(server.dsn) as conn:
        migrate_postgres(conn)
    pool = open_pool(server.dsn, max_size=2, connect_timeout_s=2, acquire_timeout_s=2.0)
    try:
        sink = PostgresSink(pool, copy_from_rows=copy_from)
        assert sink.write_batch(punches(0, 100)).inserted == 100
        server.stop()
        with pytest.raises(TransientSinkError):
            sink.write_batch(punches(50, 150))
        server.start()
        # The retry of the failed batch lands; its overlap with the first batch does not double.
        assert sink.write_batch(punches(50, 150)) == WriteResult(100, 50)
        assert count(pool) == 150
    finally:
        pool.close()


def timesheets(pool: ConnectionPool) -> dict[tuple[str, str], tuple[object, ...]]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT employee_id, work_day::text, timezone, first_in, last_out, worked_seconds, punches, pairs, flags"
            " FROM timesheets"
        ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_timesheets_follow_overnight_shifts_and_late_punches(pool: ConnectionPool, copy_from: int) -> None:
    sink = PostgresSink(pool, TimesheetSettings(day_start=time(8, 0)), copy_from_rows=copy_from)  # a night shift ends before 08:00
    berlin = "Europe/Berlin"
    night_in = enriched(0, employee_id="E-N", device_time=datetime(2026, 3, 1, 22, 0), device_tz=berlin)
    morning_out = enriched(1, employee_id="E-N", device_time=datetime(2026, 3, 2, 6, 0), device_tz=berlin)
    day_in = enriched(2, employee_id="E-D", device_time=datetime(2026, 3, 2, 9, 0))  # Asia/Dhaka
    sink.write_batch([night_in, day_in])
    first = timesheets(pool)
    assert first[("E-N", "2026-03-01")][-4:] == (0, 1, 0, ["single_punch"])
    assert first[("E-D", "2026-03-02")][0] == "Asia/Dhaka"
    sink.write_batch([morning_out])  # the check-out arrives late, in a later batch
    night = timesheets(pool)[("E-N", "2026-03-01")]  # 06:00 is before the 04:00 boundary + 1 day
    assert night == (berlin, datetime(2026, 3, 1, 21, 0, tzinfo=UTC), datetime(2026, 3, 2, 5, 0, tzinfo=UTC),
                     8 * 3600, 2, 1, [])
    assert ("E-N", "2026-03-02") not in timesheets(pool)
    sink.write_batch([morning_out, night_in])  # a repeat changes nothing
    assert timesheets(pool)[("E-N", "2026-03-01")] == night


def test_a_corrected_mapping_moves_the_punch_and_its_timesheet_day(pool: ConnectionPool, copy_from: int) -> None:
    sink = PostgresSink(pool, TimesheetSettings(), copy_from_rows=copy_from)
    wrong = enriched(0, employee_id="E-WRONG", device_time=datetime(2026, 3, 3, 9, 0))
    assert sink.write_batch([wrong]) == WriteResult(offered=1, inserted=1)
    resent = enriched(0, employee_id="E-WRONG", device_time=datetime(2026, 3, 3, 9, 0),
                      received_at=datetime(2026, 3, 9, tzinfo=UTC), offset=99)
    assert sink.write_batch([resent]) == WriteResult(offered=1, inserted=0)  # a plain repeat: nothing moves
    fixed = enriched(0, employee_id="E-RIGHT", device_time=datetime(2026, 3, 3, 9, 0), offset=500)
    assert sink.write_batch([fixed]) == WriteResult(offered=1, inserted=0)  # replayed after the fix
    with pool.connection() as conn:
        row = conn.execute("SELECT employee_id, received_at, source_offset FROM attendance_records").fetchall()
    assert row == [("E-RIGHT", wrong.punch.received_at, 0)]  # corrected; first-seen lineage kept
    assert set(timesheets(pool)) == {("E-RIGHT", "2026-03-03")}  # the wrong employee's day is gone
