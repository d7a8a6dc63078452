"""End to end: ADMS requests and raw punches through the real worker into both sinks.

Each test builds its own pipeline (pipeline_helpers.Pipeline): fresh topics, a worker app id of
its own, a fresh Postgres schema (or a private server), a state folder with its own embedded
ClickHouse store, and `tapstream worker` / `tapstream push` run as subprocesses. Expected counts
are computed here from what the test sends, never read back from the pipeline. Process logs are
printed when a test fails.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import zip_longest
from typing import TYPE_CHECKING

import psycopg

from infra.employees import publish_employees
from infra.harness import group_lag, wait_drained, wait_http, wait_worker, worker_stats
from infra.migrate import migrate_postgres
from infra.postgres_server import PostgresServer
from infra.simulate import post
from schemas.codec import decode
from schemas.punch import RawPunch
from schemas.quarantine import QuarantineRecord, Reason, Stage
from tests.integration.pipeline_helpers import (
    Pipeline, clickhouse_counts, consume_all, employees, pg_count, produce, raw_punches,
    register_device, request, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

KNOWN = [str(2001 + n) for n in range(30)]
BERLIN = "Europe/Berlin"


def attlog(lines: list[str], newline: str = "\r\n") -> bytes:
    return (newline.join(lines) + newline).encode()


def test_same_adms_batch_twice_gives_one_row_per_punch(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(pg_schema.dsn)
    serial = "E2E-DUP-01"
    register_device(pg_schema.dsn, serial, BERLIN)
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    start = datetime(2026, 3, 2, 7, 30, 0)
    lines = [f"{code}\t{start.replace(minute=30 + n):%Y-%m-%d %H:%M:%S}\t0\t1\t\t0\t0" for n, code in enumerate(KNOWN)]
    body = attlog(lines)
    punches = len(lines)

    worker = pipeline.start_worker()
    push, base = pipeline.start_push()
    path = f"/iclock/cdata?SN={serial}&table=ATTLOG&Stamp=9999"
    assert post(base, path, body) == f"OK: {punches}"
    wait_drained(base, 60)
    wait_worker(pipeline.stats_file, worker, punches, 60)  # stored before the device re-sends
    assert post(base, path, body) == f"OK: {punches}"  # the device never saw the first reply
    wait_drained(base, 60)
    stats = wait_worker(pipeline.stats_file, worker, 2 * punches, 60)
    assert push.alive()
    assert worker.stop() == 0

    assert stats["consumed"] == 2 * punches  # the endpoint publishes both copies: the stream drops one
    assert stats["duplicates"] == punches
    assert stats["written"] == {"postgres": punches, "clickhouse": punches}
    assert pg_count(pg_schema.dsn) == punches
    assert pg_count(pg_schema.dsn, "SELECT count(DISTINCT event_id) FROM attendance_records") == punches
    counts = clickhouse_counts(pipeline)
    # The stream drops the repeat before any sink sees it, so even unmerged parts hold one row each.
    assert counts == {"final": punches, "plain": punches, "distinct_ids": punches}


def test_postgres_outage_mid_stream_loses_and_doubles_nothing(
    make_pipeline: Callable[..., Pipeline], private_postgres: Callable[[], PostgresServer]
) -> None:
    server = private_postgres()
    with psycopg.connect(server.dsn) as conn:
        migrate_postgres(conn)
    pipeline = make_pipeline(server.dsn)
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    before = raw_punches("E2E-PG-01", KNOWN, 150, datetime(2026, 3, 3, 6, 0)) + \
        raw_punches("E2E-PG-02", KNOWN, 150, datetime(2026, 3, 3, 6, 0))
    during = raw_punches("E2E-PG-01", KNOWN, 200, datetime(2026, 3, 4, 6, 0)) + \
        raw_punches("E2E-PG-02", KNOWN, 200, datetime(2026, 3, 4, 6, 0))
    after = raw_punches("E2E-PG-01", KNOWN, 50, datetime(2026, 3, 5, 6, 0))
    total = len(before) + len(during) + len(after)
    assert len({p.event_id for p in before + during + after}) == total

    worker = pipeline.start_worker()
    produce(pipeline.bootstrap, pipeline.raw, before)
    wait_for(lambda: pg_count(server.dsn) == len(before), 60, "the first punches in Postgres", worker)

    server.stop()
    produce(pipeline.bootstrap, pipeline.raw, during)
    outage = wait_for(
        lambda: worker_stats(pipeline.stats_file, worker.pid).get("last_sink_error", {}).get("postgres"),
        60, "the worker to report the Postgres outage", worker,
    )
    assert "postgres" in outage
    assert worker.alive()
    # Nothing of the held punches is acknowledged: the group's offsets stay behind them.
    assert group_lag(pipeline.bootstrap, pipeline.app_id, pipeline.raw) >= len(during)

    server.start()
    produce(pipeline.bootstrap, pipeline.raw, after)
    stats = wait_worker(pipeline.stats_file, worker, total, 120)
    wait_for(lambda: pg_count(server.dsn) == total, 60, "every punch in Postgres", worker)
    assert worker.stop() == 0

    assert stats["consumed"] == total and stats["duplicates"] == 0
    assert stats["last_sink_error"] == {}
    assert stats["written"] == {"postgres": total, "clickhouse": total}
    assert pg_count(server.dsn) == total
    assert pg_count(server.dsn, "SELECT count(DISTINCT event_id) FROM attendance_records") == total
    # The held batch was written to ClickHouse once and never re-delivered: no repeat even unmerged.
    assert clickhouse_counts(pipeline) == {"final": total, "plain": total, "distinct_ids": total}


def test_worker_killed_mid_batch_redelivers_without_doubling(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(
        pg_schema.dsn,
        # The production store (rocksdb), so the restarted worker also recovers its tables from disk.
        TAPSTREAM_WORKER__STORE="rocksdb://",
        TAPSTREAM_WORKER__BATCH_MAX="200",
        # The killed member keeps its partitions until its session times out (60 s by
        # default); 10 s keeps the test short.
        TAPSTREAM_WORKER__SESSION_TIMEOUT_S="10",
        TAPSTREAM_WORKER__HEARTBEAT_INTERVAL_S="1",
    )
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    stored = raw_punches("E2E-KILL-01", KNOWN, 150, datetime(2026, 3, 9, 6, 0)) + \
        raw_punches("E2E-KILL-02", KNOWN, 150, datetime(2026, 3, 9, 6, 0))
    held = raw_punches("E2E-KILL-01", KNOWN, 250, datetime(2026, 3, 10, 6, 0)) + \
        raw_punches("E2E-KILL-02", KNOWN, 250, datetime(2026, 3, 10, 6, 0))
    later = raw_punches("E2E-KILL-03", KNOWN, 100, datetime(2026, 3, 11, 6, 0))
    total = len(stored) + len(held) + len(later)

    first = pipeline.start_worker("worker-1")
    produce(pipeline.bootstrap, pipeline.raw, stored)
    wait_for(lambda: pg_count(pg_schema.dsn) == len(stored), 60, "the first punches in Postgres", first)
    wait_for(lambda: group_lag(pipeline.bootstrap, pipeline.app_id, pipeline.raw) == 0, 30, "their offsets committed")

    # Hold the Postgres write of the next batch (ClickHouse takes it), then kill the worker.
    with psycopg.connect(pg_schema.dsn) as blocker:
        blocker.execute("LOCK TABLE attendance_records IN SHARE MODE")  # reads pass, writes wait
        blocker_pid = blocker.info.backend_pid
        produce(pipeline.bootstrap, pipeline.raw, held)
        wait_for(lambda: pg_count(pg_schema.dsn, BLOCKED_BY, (blocker_pid,)) > 0, 60,
                 "the worker's Postgres write to wait on the lock", first)
        first.kill()
        blocker.rollback()
    assert pg_count(pg_schema.dsn) == len(stored)
    assert group_lag(pipeline.bootstrap, pipeline.app_id, pipeline.raw) == len(held)  # none acked

    produce(pipeline.bootstrap, pipeline.raw, later)
    second = pipeline.start_worker("worker-2")
    stats = wait_worker(pipeline.stats_file, second, len(held) + len(later), 90)
    wait_for(lambda: pg_count(pg_schema.dsn) == total, 30, "every punch in Postgres", second)
    assert second.stop() == 0

    # Every unacked punch came again, and nothing already committed did.
    assert stats["consumed"] == len(held) + len(later) and stats["duplicates"] == 0
    assert stats["inserted"]["postgres"] == len(held) + len(later)
    assert pg_count(pg_schema.dsn, "SELECT count(DISTINCT event_id) FROM attendance_records") == total
    counts = clickhouse_counts(pipeline)
    # ClickHouse may hold the batch written before the kill twice until a merge: FINAL collapses it.
    assert counts["final"] == counts["distinct_ids"] == total, counts
    assert total <= counts["plain"] <= total + len(held), counts


BLOCKED_BY = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"


# ATTLOG lines that are punches, as devices and firmware variants send them.
GOOD_LINES = [
    b"2101\t2026-03-06 08:00:00\t0\t1\t\t0\t0",
    b"2102\t2026-03-06 08:01:00\t1\t15",  # no work code, no reserved fields
    b"2103\t2026-03-06 08:02:00",  # no state: stored as 255, "undefined"
    b"2104\t2026-03-06 08:03:00\t0\t1\t\t0\t0\textra\tfields\tfrom\tnewer\tfirmware",
    b"PIN=2105\tTime=2026-03-06 08:04:00\tStatus=0\tVerify=1",  # key=value row
    b"2106\t2026-03-06 08:05:00\t0\t4\t\t0\t0\t",  # trailing TAB
]
UNKNOWN_BADGE_LINE = b"9999\t2026-03-06 08:06:00\t0\t1"  # valid, but HR does not know 9999
BAD_LINES = {
    b"2107\t2026-13-45 25:61:00\t0\t1": Reason.BAD_TIMESTAMP,
    b"2108\t06/03/2026 08:07\t0\t1": Reason.BAD_TIMESTAMP,
    b"2109": Reason.MISSING_FIELDS,
    b"2110\t\t0\t1": Reason.MISSING_FIELDS,
    b"PIN=2111\tStatus=0": Reason.MISSING_FIELDS,
    b"\xff\xfe\x00\x13garbage\x80": Reason.NOT_TEXT,
    b"2112\t2026-03-06 08:08:00\x00\x01\x02": Reason.NOT_TEXT,
    b"   \t2026-03-06 08:09:00\t0\t1": Reason.BAD_FIELD,  # empty PIN
    b"2113\t2026-03-06 08:10:00\t300\t1": Reason.BAD_FIELD,
    b"2114\t2026-03-06 08:11:00\tx\t1": Reason.BAD_FIELD,
    b"7" * 70 + b"\t2026-03-06 08:12:00\t0\t1": Reason.BAD_FIELD,  # PIN over 64 characters
    b"OPLOG 4\t14\t2026-03-06 07:00:00\t0\t0\t0\t0": Reason.MALFORMED_LINE,
    b"pin=2115\tnonsense\ttime=2026-03-06 08:13:00": Reason.MALFORMED_LINE,
}
GARBAGE_LINES = [bytes(range(128, 256)), b"\x00\x01\x02\x03", b"\xde\xad\xbe\xef" * 8]
MAX_BODY = 4096


def mixed_body(lines: list[bytes]) -> bytes:
    """Lines separated by CRLF and LF in turn, with blank and whitespace-only lines between."""
    out = b""
    for n, line in enumerate(lines):
        out += line + (b"\r\n" if n % 2 else b"\n")
        if n % 5 == 4:
            out += b"\r\n" if n % 2 else b"  \t \n"
    return out


def test_malformed_adms_input_is_answered_and_quarantined(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(pg_schema.dsn, TAPSTREAM_PUSH__MAX_BODY_BYTES=str(MAX_BODY))
    serial, stranger = "E2E-BAD-01", "E2E-NOBODY-99"
    register_device(pg_schema.dsn, serial, "Asia/Dhaka")
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(str(c) for c in range(2101, 2116)))
    # Good and bad lines interleaved: one batch, every kind of line.
    mixed = [line for pair in zip_longest([*GOOD_LINES, UNKNOWN_BADGE_LINE], BAD_LINES) for line in pair if line]
    stranger_lines = [GOOD_LINES[0], b"2199\t2026-03-06 09:00:00\t0\t1", b"2109"]
    oversized = attlog([f"{KNOWN[n % 30]}\t2026-03-07 08:{n // 60:02d}:{n % 60:02d}\t0\t1\t\t0\t0" for n in range(300)])
    assert len(oversized) > MAX_BODY
    unknown_table = b"USER PIN=2101\tName=Someone\tPri=0\n"
    # One quarantine record per bad line (per line of an unknown device), the line kept as sent.
    expected_lines = sorted(
        [(reason, line, serial) for line, reason in BAD_LINES.items()]
        + [(Reason.NOT_TEXT, line, serial) for line in GARBAGE_LINES]
        + [(Reason.UNKNOWN_DEVICE, line, stranger) for line in stranger_lines]
        + [(Reason.UNKNOWN_TABLE, unknown_table, serial)]
    )

    worker = pipeline.start_worker()
    push, base = pipeline.start_push()
    cdata = "/iclock/cdata?SN={}&table={}&Stamp=9999"
    replies = [
        request(base, cdata.format(serial, "ATTLOG"), mixed_body(mixed)),
        request(base, cdata.format(serial, "ATTLOG"), mixed_body(GARBAGE_LINES)),
        request(base, cdata.format(stranger, "ATTLOG"), mixed_body(stranger_lines)),
        request(base, cdata.format(serial, "ATTLOG"), oversized),
        request(base, cdata.format(serial, "FOOBAR"), unknown_table),
        request(base, "/iclock/cdata?table=ATTLOG", attlog(["2101\t2026-03-06 10:00:00"])),
        request(base, cdata.format("not%20a%20serial!", "ATTLOG"), attlog(["2101\t2026-03-06 10:00:00"])),
    ]
    assert replies[:3] == [(200, f"OK: {len(mixed)}"), (200, f"OK: {len(GARBAGE_LINES)}"), (200, "OK: 3")]
    assert replies[3] == (413, f"FAIL: body of {len(oversized)} bytes exceeds the {MAX_BODY}-byte limit")
    assert replies[4] == (200, "OK")
    assert replies[5] == (400, "FAIL: missing SN query parameter")
    assert replies[6][0] == 400 and replies[6][1].startswith("FAIL: SN ")
    wait_drained(base, 60)
    assert push.alive() and wait_http(base + "/healthz", 5)["spool_depth"] == 0

    valid = len(GOOD_LINES) + 1
    stats = wait_worker(pipeline.stats_file, worker, valid, 60)
    assert worker.stop() == 0 and push.stop() == 0
    assert (stats["consumed"], stats["unmatched"], stats["quarantined"]) == (valid, 1, 0)

    found = consume_all(pipeline.bootstrap, pipeline.dlq, len(expected_lines) + 1)
    records = [decode(QuarantineRecord, m.value()) for m in found]
    assert all(r.stage is Stage.PUSH and m.key() == (r.device_serial or "").encode() for m, r in zip(found, records))
    too_large = [r for r in records if r.reason is Reason.BODY_TOO_LARGE]
    lines = sorted((r.reason, r.original(), r.device_serial) for r in records if r.reason is not Reason.BODY_TOO_LARGE)
    assert lines == expected_lines
    # Of an oversized body, the head is kept (at least up to the limit) with the full size.
    assert len(too_large) == 1 and too_large[0].device_serial == serial
    assert too_large[0].original_size == len(oversized) and oversized.startswith(too_large[0].original())
    assert len(too_large[0].original()) >= MAX_BODY

    parked = consume_all(pipeline.bootstrap, pipeline.unmatched, 1)
    assert [decode(RawPunch, m.value()).raw.encode() for m in parked] == [UNKNOWN_BADGE_LINE]

    with psycopg.connect(pg_schema.dsn) as conn:
        stored = conn.execute("SELECT user_code, punch_state FROM attendance_records ORDER BY user_code").fetchall()
    assert stored == [("2101", 0), ("2102", 1), ("2103", 255), ("2104", 0), ("2105", 0), ("2106", 0)]
    good = len(GOOD_LINES)
    assert clickhouse_counts(pipeline) == {"final": good, "plain": good, "distinct_ids": good}
