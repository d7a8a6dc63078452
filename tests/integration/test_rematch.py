"""Late employee mappings and replays through the real worker.

* A punch of an unknown badge is parked (topic and Postgres) and recorded, with no manual step,
  once HR adds the code to the Postgres employees table: the worker syncs the table to the
  topic, sees the code mapped, re-sends the parked punch, and resolves its parked row.
* An operator's replay (the group's offsets moved back) is not swallowed by stream-side dedup,
  while a device's re-send still is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka import ConsumerGroupTopicPartitions

from infra.harness import wait_worker
from tests.integration.pipeline_helpers import (
    FAST_WORKER, Pipeline, add_employee, clickhouse_counts, pg_count, produce, raw_punches, synced, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

OPEN = "SELECT count(*) FROM unmatched_punches WHERE resolved_at IS NULL"


def test_parked_punches_are_recorded_once_hr_maps_their_code(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    dsn = pg_schema.dsn
    pipeline = make_pipeline(dsn, **FAST_WORKER)
    add_employee(dsn, "3001", "E-3001")
    known = raw_punches("LATE-MAP-01", ["3001"], 20, datetime(2026, 5, 4, 7, 0))
    unknown = raw_punches("LATE-MAP-01", ["7777"], 10, datetime(2026, 5, 4, 9, 0))
    worker = pipeline.start_worker()
    synced(pipeline, "3001", worker)
    produce(pipeline.bootstrap, pipeline.raw, known + unknown)
    wait_for(lambda: pg_count(dsn) == 20, 60, "the known punches recorded", worker)
    wait_for(lambda: pg_count(dsn, OPEN) == 10, 60, "the unknown ones parked in Postgres", worker)
    assert pg_count(dsn, "SELECT count(DISTINCT user_code) FROM unmatched_punches") == 1

    add_employee(dsn, "7777", "E-7777")  # HR enrols the badge, hours later in real life
    wait_for(lambda: pg_count(dsn) == 30, 60, "the parked punches recorded", worker)
    wait_for(lambda: pg_count(dsn, OPEN) == 0, 30, "the parked rows resolved", worker)
    stats = wait_worker(pipeline.stats_file, worker, 40, 30)  # 30 produced + 10 re-sent
    assert worker.stop() == 0

    assert stats["unmatched"] == 10 and stats["duplicates"] == 0
    assert stats["written"] == {"postgres": 30, "clickhouse": 30}
    assert pg_count(dsn, "SELECT count(*) FROM attendance_records WHERE employee_id = 'E-7777'") == 10
    assert pg_count(dsn, "SELECT count(*) FROM unmatched_punches WHERE resolved_at IS NOT NULL") == 10
    assert pg_count(dsn, "SELECT punches FROM timesheets WHERE employee_id = 'E-7777'") == 10
    assert clickhouse_counts(pipeline)["final"] == 30


def test_an_operator_replay_is_not_swallowed_by_dedup(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    dsn = pg_schema.dsn
    pipeline = make_pipeline(dsn, **FAST_WORKER)
    add_employee(dsn, "3002", "E-3002")
    punches = raw_punches("REPLAY-01", ["3002"], 50, datetime(2026, 5, 5, 7, 0))
    worker = pipeline.start_worker()
    synced(pipeline, "3002", worker)
    produce(pipeline.bootstrap, pipeline.raw, punches)
    wait_for(lambda: pg_count(dsn) == 50, 60, "the punches recorded", worker)
    produce(pipeline.bootstrap, pipeline.raw, punches[:10])  # a device re-sends: dropped by dedup
    stats = wait_worker(pipeline.stats_file, worker, 60, 60)
    assert stats["duplicates"] == 10
    assert worker.stop() == 0

    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM attendance_records")  # the records lost, say a restore gone wrong
    rewind(pipeline)  # the operator moves the group back to the start of the topic
    worker = pipeline.start_worker("worker-2")
    wait_for(lambda: pg_count(dsn) == 50, 60, "every punch recorded again", worker)
    stats = wait_worker(pipeline.stats_file, worker, 60, 60)
    assert worker.stop() == 0
    # the 50 originals pass (a replay of the same messages); their 10 re-sends are still duplicates
    assert stats["duplicates"] == 10 and stats["written"]["postgres"] == 50


def rewind(pipeline: Pipeline) -> None:
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    partitions = [TopicPartition(pipeline.raw, p, 0) for p in range(pipeline.raw_partitions)]
    futures = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(pipeline.app_id, partitions)])
    for future in futures.values():
        future.result(timeout=30)
