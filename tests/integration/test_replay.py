"""`tapstream replay` rebuilds emptied sinks to exactly what the live worker stored.

A real worker first carries a few hundred punches — device re-sends among them, an unknown
badge, an implausible punch and an undecodable message — into Postgres and the embedded
ClickHouse store; `tapstream checksums` records the result. The sinks are then emptied and
rebuilt by `tapstream replay` run as an operator runs it (a subprocess with TAPSTREAM_*
settings). The pytest process never opens the embedded store: child processes do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.employees import publish_employees
from infra.harness import group_lag, wait_worker
from tests.integration.pipeline_helpers import (
    CLICKHOUSE_DATABASE, REPO, Pipeline, employees, pg_count, produce, raw_punches, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

KNOWN = [str(3001 + n) for n in range(20)]
UNKNOWN = "9999"
STORED = 300  # distinct punches of known employees
RESENT = 40  # of those, sent again by their devices (later received_at, same event id)


def test_replay_rebuilds_emptied_sinks_to_the_live_checksums(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    # Small batches, so a re-send and its first copy fall in different batches (live and replayed).
    pipeline = make_pipeline(pg_schema.dsn, TAPSTREAM_WORKER__BATCH_MAX="50")
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    messages = feed(pipeline)
    worker = pipeline.start_worker()
    stats = wait_worker(pipeline.stats_file, worker, messages, 90)
    assert (stats["duplicates"], stats["unmatched"], stats["quarantined"]) == (RESENT, 1, 2), stats

    refused = pipeline.run("replay", "--from", "earliest", "--yes")
    assert refused.returncode == 1, refused.stderr
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("error:")]
    assert f"worker group '{pipeline.app_id}' has 1 active member(s)" in line
    assert "stop `tapstream worker` first" in line
    locked = pipeline.run("checksums")
    assert locked.returncode == 1 and "holds the embedded store" in locked.stderr, locked.stderr
    wait_for(lambda: group_lag(pipeline.bootstrap, pipeline.app_id, pipeline.raw) == 0, 30, "offsets committed", worker)
    assert worker.stop() == 0

    live = checksums(pipeline)
    assert [live[t]["rows"] for t in ("postgres.attendance_records", "clickhouse.attendance_events")] == [STORED] * 2
    assert live["postgres.timesheets"]["rows"] > 0
    ends = topic_ends(pipeline); print("ENDS", ends)
    assert group_offsets(pipeline) == {p: end if end else -1001 for p, end in ends.items()}  # -1001: none
    set_group_offsets(pipeline, 0)  # as if the worker's position had been reset

    # One store rebuilt: the other is left alone, and the worker's position is not moved.
    empty_sinks(pipeline, pg_schema)
    only = replay(pipeline, "--sink", "clickhouse")
    assert summary_counts(only) == (messages, STORED, RESENT, 1, 2) and list(only["sinks"]) == ["clickhouse"]
    assert only["moved"] == [] and group_offsets(pipeline) == {p: 0 for p in ends}
    assert checksums(pipeline)["clickhouse.attendance_events"] == live["clickhouse.attendance_events"]
    assert pg_count(pg_schema.dsn) == 0 and pg_count(pg_schema.dsn, "SELECT count(*) FROM timesheets") == 0

    empty_sinks(pipeline, pg_schema)
    full = replay(pipeline)
    assert summary_counts(full) == (messages, STORED, RESENT, 1, 2)
    assert {name: s["written"] for name, s in full["sinks"].items()} == {"postgres": STORED, "clickhouse": STORED}
    assert full["sinks"]["postgres"]["inserted"] == STORED
    assert checksums(pipeline) == live
    assert sorted((m["partition"], m["old"], m["new"]) for m in full["moved"]) == [(p, 0, e) for p, e in ends.items() if e]
    assert group_offsets(pipeline) == ends  # a restarted worker does not redo the range


def test_a_time_range_replays_only_what_was_published_in_it(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(pg_schema.dsn)
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    waves = [raw_punches(serial, KNOWN, 40, datetime(2026, 4, 7, 7, 0)) for serial in ("RT-01", "RT-02", "RT-03")]
    marks = []
    for wave in waves:
        produce(pipeline.bootstrap, pipeline.raw, wave)
        time.sleep(0.05)  # Kafka timestamps are milliseconds: keep the waves apart
        marks.append(datetime.now(UTC).isoformat())
        time.sleep(0.05)

    done = pipeline.run("replay", "--from", marks[0], "--to", marks[1], "--sink", "postgres", "--yes", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary_counts(summary) == (40, 40, 0, 0, 0) and summary["moved"] == []
    assert sorted(code for (code,) in pg_rows(pg_schema.dsn, "SELECT DISTINCT device_serial FROM attendance_records")) \
        == ["RT-02"]
    assert group_offsets(pipeline) == {p: -1001 for p in range(pipeline.raw_partitions)}  # a --to moves nothing


def pg_rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def feed(pipeline: Pipeline) -> int:
    """Produce the live run's input; return the number of messages on the raw topic."""
    day, devices = datetime(2026, 4, 6, 7, 0), [f"RP-{n:02d}" for n in range(1, 5)]  # over both partitions
    first = [p for serial in devices for p in raw_punches(serial, KNOWN, STORED // len(devices), day)]
    # The same punches read again later: new received_at, same event ids.
    resent = [p for serial in devices for p in raw_punches(serial, KNOWN, RESENT // len(devices), day)]
    unknown = raw_punches(devices[0], [UNKNOWN], 1, datetime(2026, 4, 6, 12, 0))
    clock_reset = raw_punches(devices[1], KNOWN, 1, datetime(2000, 1, 1, 0, 0))  # quarantined: implausible_time
    sent = produce(pipeline.bootstrap, pipeline.raw, first + unknown + clock_reset)
    sent += produce(pipeline.bootstrap, pipeline.raw, resent)
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(pipeline.raw, key=devices[2].encode(), value=b"\xffnot a punch")  # quarantined: undecodable
    assert producer.flush(30) == 0
    return sent + 1


def replay(pipeline: Pipeline, *args: str) -> dict[str, Any]:
    done = pipeline.run("replay", "--from", "earliest", "--yes", "--json", *args, timeout_s=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def summary_counts(summary: dict[str, Any]) -> tuple[int, ...]:
    return tuple(summary[k] for k in ("messages", "written", "duplicates", "unmatched", "quarantined"))


def checksums(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    done = pipeline.run("checksums", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    sums: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return sums


EMPTY_CLICKHOUSE = """
import sys
from sinks.clickhouse import open_client
client = open_client(sys.argv[1], sys.argv[2])
client.command(f"TRUNCATE TABLE {sys.argv[2]}.attendance_events")
client.close()
"""


def empty_sinks(pipeline: Pipeline, pg_schema: PgSchema) -> None:
    """Empty both stores: Postgres here, the embedded ClickHouse store in a child process."""
    with psycopg.connect(pg_schema.dsn) as conn:
        conn.execute("TRUNCATE attendance_records, timesheets")
    done = subprocess.run(
        [sys.executable, "-c", EMPTY_CLICKHOUSE, pipeline.clickhouse_dsn, CLICKHOUSE_DATABASE],
        capture_output=True, text=True, timeout=120, cwd=pipeline.logs, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, f"emptying ClickHouse failed:\n{done.stderr[-3000:]}"
    assert checksums(pipeline)["clickhouse.attendance_events"]["rows"] == 0


def topic_ends(pipeline: Pipeline) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"{pipeline.app_id}-probe"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(pipeline.raw, p), timeout=10)[1]
                for p in range(pipeline.raw_partitions)}
    finally:
        consumer.close()


def set_group_offsets(pipeline: Pipeline, offset: int) -> None:
    """Commit ``offset`` for the (stopped) worker group on every raw partition."""
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    request = ConsumerGroupTopicPartitions(
        pipeline.app_id, [TopicPartition(pipeline.raw, p, offset) for p in range(pipeline.raw_partitions)]
    )
    admin.alter_consumer_group_offsets([request])[pipeline.app_id].result(timeout=30)
    assert group_offsets(pipeline) == {p: offset for p in range(pipeline.raw_partitions)}


def group_offsets(pipeline: Pipeline) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    request = ConsumerGroupTopicPartitions(
        pipeline.app_id, [TopicPartition(pipeline.raw, p) for p in range(pipeline.raw_partitions)]
    )
    result = admin.list_consumer_group_offsets([request])[pipeline.app_id].result(timeout=30)
    return {tp.partition: tp.offset for tp in result.topic_partitions}
