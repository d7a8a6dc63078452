"""One isolated bench run: its names, its topics and schema, loading, row counts, clean-up.

``plan_run`` derives everything from the caller's settings (pure: no service is touched):
topics ``<name>.bench-<run>``, worker app id ``tapstream-bench-<run>`` (= consumer group and
prefix of Faust's own topics), PostgreSQL schema ``bench_<run>``, state folder
``<state>/bench/<run>`` (a fresh embedded ClickHouse store and table store). The other
functions create, fill, count and remove exactly those, never anything else.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from infra.kafka import answers_metadata
from infra.migrate import migrate_postgres
from infra.topics import ensure_topics, topic_specs
from tapstream.errors import StackError, TapstreamError
from tapstream.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)

Say = Callable[[str], None]

@dataclass(frozen=True)
class BenchOptions:
    """What to measure. batch_max None = the configured default; idle_s, timeout_s in seconds;
    mix: re-sends, unknown badges and reset clocks among the events (infra.bench_events.Mix)."""

    events: int
    devices: int = 10
    employees: int = 1000
    batch_max: int | None = None
    profile: bool = False
    keep: bool = False
    idle_s: float = 5.0
    timeout_s: float = 1800.0
    start_timeout_s: float = 120.0
    seed: int = 7
    mix: bool = True


@dataclass(frozen=True)
class BenchRun:
    """The isolated names of one run; ``settings`` is the tree the bench worker runs with."""

    run_id: str
    settings: Settings
    schema: str
    base_dsn: str

    @property
    def folder(self) -> Path:
        return self.settings.state_dir

    @property
    def dsn(self) -> str:
        """The DSN that puts the run's schema alone on the search_path."""
        return make_conninfo(self.base_dsn, options=f"-c search_path={self.schema}")

    @property
    def profile_path(self) -> Path:
        return self.folder / "worker.prof"

    def topic_names(self) -> list[str]:
        t = self.settings.topics
        return [t.raw, t.unmatched, t.dlq, t.employees, t.device_status, t.live, t.alerts]

    def worker_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus the TAPSTREAM_* variables that point a worker at this run only."""
        s, p = self.settings, ENV_PREFIX
        env = dict(base)
        env.update({
            f"{p}STATE_DIR": str(s.state_dir),
            f"{p}KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap,
            f"{p}TOPICS__RAW": s.topics.raw,
            f"{p}TOPICS__UNMATCHED": s.topics.unmatched,
            f"{p}TOPICS__DLQ": s.topics.dlq,
            f"{p}TOPICS__EMPLOYEES": s.topics.employees,
            f"{p}TOPICS__DEVICE_STATUS": s.topics.device_status,
            f"{p}TOPICS__LIVE": s.topics.live,
            f"{p}TOPICS__ALERTS": s.topics.alerts,
            f"{p}WORKER__APP_ID": s.worker.app_id,
            f"{p}WORKER__BATCH_MAX": str(s.worker.batch_max),
            f"{p}POSTGRES__DSN": self.dsn,
            f"{p}CLICKHOUSE__DATABASE": s.clickhouse.database,
            # No /metrics: a bench run must not collide with a running worker's port.
            f"{p}METRICS__WORKER_PORT": "0",
            f"{p}METRICS__PULL_PORT": "0",
        })
        return env


def plan_run(settings: Settings, options: BenchOptions, run_id: str | None = None) -> BenchRun:
    """Derive the run's names and settings from ``settings`` (no service is touched)."""
    run_id = run_id or f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    suffix = f"bench-{run_id}"
    t = settings.topics
    topics = t.model_copy(update={
        "raw": f"{t.raw}.{suffix}", "unmatched": f"{t.unmatched}.{suffix}",
        "dlq": f"{t.dlq}.{suffix}", "employees": f"{t.employees}.{suffix}",
        "device_status": f"{t.device_status}.{suffix}", "live": f"{t.live}.{suffix}",
        "alerts": f"{t.alerts}.{suffix}",
    })
    worker = settings.worker.model_copy(update={
        "app_id": f"tapstream-{suffix}",
        "batch_max": options.batch_max or settings.worker.batch_max,
    })
    database = f"{settings.clickhouse.database}_bench_{run_id.replace('-', '_')}"
    isolated = settings.model_copy(update={
        "state_dir": settings.path("bench", run_id), "topics": topics, "worker": worker,
        "clickhouse": settings.clickhouse.model_copy(update={"database": database}),
    })
    schema = f"bench_{run_id.replace('-', '_')}"
    return BenchRun(run_id, isolated, schema, settings.postgres.effective_dsn())


def check_services(settings: Settings) -> None:
    """Raise StackError unless the broker and PostgreSQL answer (the bench starts neither)."""
    if not answers_metadata(settings.kafka.bootstrap, timeout_s=5.0):
        raise StackError(f"no Kafka broker answers at {settings.kafka.bootstrap}: run `tapstream stack up`")
    try:
        psycopg.connect(settings.postgres.effective_dsn(), connect_timeout=5).close()
    except psycopg.Error as exc:
        raise StackError(f"PostgreSQL does not answer ({exc}): run `tapstream stack up`") from exc


def prepare(run: BenchRun, say: Say) -> None:
    """Create the run's topics, its migrated schema and its state folder."""
    s = run.settings
    ensure_topics(s.kafka.bootstrap, topic_specs(s.topics))
    with psycopg.connect(run.base_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(run.schema)))
    with psycopg.connect(run.dsn) as conn:
        migrate_postgres(conn)
    run.folder.mkdir(parents=True, exist_ok=True)
    say(f"  isolated: topics *.bench-{run.run_id}, schema {run.schema}, group {s.worker.app_id}, state {run.folder}")


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], timeout_s: float = 120.0) -> None:
    """Write every (key, value) to ``topic`` as the push producer does, as fast as librdkafka goes."""
    producer = Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
        "compression.type": "lz4", "linger.ms": 20, "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000, "message.timeout.ms": int(timeout_s * 1000),
    })
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for n, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise TapstreamError(f"loading {topic}: {remaining} unconfirmed, {len(failures)} failed: {failures[:3]}")


# What the bench counts in the run's schema: records (the sink), and what the worker's ledger
# projected from attendance.unmatched and attendance.dlq.
COUNTED_TABLES = ("attendance_records", "unmatched_punches", "quarantine")


def postgres_counts(run: BenchRun) -> tuple[dict[str, int], str]:
    """Rows of each COUNTED_TABLES table in the run's schema, and the server version."""
    counts: dict[str, int] = {}
    with psycopg.connect(run.base_dsn) as conn:
        for table in COUNTED_TABLES:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(run.schema), sql.Identifier(table))
            row = conn.execute(query).fetchone()
            counts[table] = int(row[0]) if row else 0
        version = conn.execute("SHOW server_version").fetchone()
    return counts, (str(version[0]) if version else "?")


def clickhouse_count(run: BenchRun) -> tuple[int, str]:
    """count() FINAL of the run's table; only after the worker exited (chDB locks its folder)."""
    from sinks.clickhouse import count_events, open_client

    client = open_client(run.settings.clickhouse_dsn(), run.settings.clickhouse.database)
    try:
        return count_events(client, run.settings.clickhouse.database, final=True), str(client.command("SELECT version()"))
    finally:
        client.close()


def cleanup(run: BenchRun, say: Say) -> None:
    """Remove the run's topics, group, schema and stores; keep its log and profiles."""
    s = run.settings
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap, "log_level": 3})
    try:
        existing = admin.list_topics(timeout=10).topics
        # Faust names its own topics (changelogs, assignor) after the app id, unique to this run.
        mine = [n for n in existing if n in run.topic_names() or n.startswith(f"{s.worker.app_id}-")]
        for future in admin.delete_topics(mine, operation_timeout=30).values() if mine else ():
            future.exception(timeout=40)
        # the worker's group and those named after it (its ledger's `<app id>-ledger`)
        groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=15).result().valid]
        mine_groups = [g for g in groups if g == s.worker.app_id or g.startswith(f"{s.worker.app_id}-")]
        for future in admin.delete_consumer_groups(mine_groups, request_timeout=15).values() if mine_groups else ():
            future.exception(timeout=20)
    except KafkaException as exc:
        say(f"  cleanup: Kafka: {exc}")
    try:
        with psycopg.connect(run.base_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(run.schema)))
    except psycopg.Error as exc:
        say(f"  cleanup: PostgreSQL: {exc}")
    _drop_clickhouse(run, say)
    for sub in ("clickhouse", "worker"):
        shutil.rmtree(run.folder / sub, ignore_errors=True)
    say(f"  cleaned up (log and profiles kept in {run.folder})")


def _drop_clickhouse(run: BenchRun, say: Say) -> None:
    if run.settings.clickhouse.dsn is None:
        return  # the embedded store lives in the run folder, removed with it
    from sinks.clickhouse import open_client

    try:
        client = open_client(run.settings.clickhouse_dsn(), run.settings.clickhouse.database)
        client.command(f"DROP DATABASE IF EXISTS {run.settings.clickhouse.database}")
        client.close()
    except TapstreamError as exc:
        say(f"  cleanup: ClickHouse: {exc}")
