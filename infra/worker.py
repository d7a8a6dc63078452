"""Run the stream worker: open the sinks (migrating their schemas), build the Faust app, run it.

The worker owns the embedded ClickHouse store while it runs (one chDB engine per process);
others read its progress from ``<state>/worker/stats.json``. With Postgres, it also projects
parked punches and dead letters into Postgres (streams.ledger), re-sends parked punches once
mapped (streams.rematch) and keeps the employees topic in step with the table. Its Prometheus
metrics are served on ``metrics.worker_port`` (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from faust.worker import Worker
from psycopg_pool import ConnectionPool

from infra.employee_sync import TopicMirror, sync_employees
from infra.kafka import answers_metadata
from infra.migrate import migrate_clickhouse, migrate_postgres
from infra.report_server import start_report_server
from infra.topics import TopicSpec, ensure_topics
from sinks.clickhouse import ClickHouseSink, open_client
from sinks.postgres import PostgresSink, open_pool
from streams.app import build_app
from streams.catchup import start_positions
from streams.delivery import Backoff, SinkRunner
from streams.ledger import Ledger
from streams.stats import WorkerMetrics, WorkerStats
from tapstream.errors import ConfigError, TapstreamError, TransientSinkError
from tapstream.metrics import new_registry, serve
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0  # how often the raw topic's consumer lag is read: a few small Kafka requests
STATS_SAVE_S = 0.2  # the stats file trails the counters by at most this much


def stats_path(settings: Settings) -> Any:
    return settings.path("worker", "stats.json")


def open_sinks(settings: Settings, stats: WorkerStats, names: Sequence[str] | None = None) -> list[SinkRunner]:
    """Open ``names`` (default: every configured sink), waiting (with backoff) for sinks down at start."""
    backoff = Backoff(settings.worker.retry_initial_s, settings.worker.retry_max_s)
    runners = []
    for name in settings.worker.sinks if names is None else names:
        sink = _until_open(name, lambda n=name: _open_sink(n, settings), backoff)
        runners.append(SinkRunner(sink, backoff, stats.note_retry))
    return runners


def _open_sink(name: str, settings: Settings) -> PostgresSink | ClickHouseSink:
    if name == "postgres":
        pg = settings.postgres
        pool = open_pool(
            pg.effective_dsn(), pg.pool_max, connect_timeout_s=pg.connect_timeout_s, acquire_timeout_s=pg.acquire_timeout_s
        )
        with pool.connection() as conn:
            applied = migrate_postgres(conn)
        logger.info("postgres sink ready (migrations applied: %s)", applied or "none new")
        return PostgresSink(pool, settings.timesheets)
    database = settings.clickhouse.database
    client = open_client(settings.clickhouse_dsn(), database)
    applied = migrate_clickhouse(client, database)
    logger.info("clickhouse sink ready (migrations applied: %s)", applied or "none new")
    return ClickHouseSink(client, database)


def _until_open(name: str, open_fn: Any, backoff: Backoff) -> Any:
    delay = backoff.initial_s
    while True:
        try:
            return open_fn()
        except TransientSinkError as exc:
            logger.warning("%s sink unavailable at start, retrying in %.1fs: %s", name, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, backoff.max_s)


def _exit_when_idle(app: faust.App, stats: WorkerStats, idle_s: float) -> None:
    """Stop the worker once it has processed something and then seen nothing for idle_s."""

    @app.timer(interval=min(1.0, idle_s / 2))  # type: ignore[untyped-decorator]  # faust's timer is untyped
    async def idle_check() -> None:
        last = stats.last_event_at
        if last is None or stats.flushed < stats.consumed:
            return  # nothing processed yet, or events still buffered or in flight
        if time.time() - last >= idle_s:
            logger.info("idle for %.0fs after %d events: stopping", idle_s, stats.consumed)
            os.kill(os.getpid(), signal.SIGTERM)


def wait_for_topics(settings: Settings, backoff: Backoff) -> None:
    """Wait (with backoff) until the broker answers; fail clearly if a topic the worker needs is missing."""
    t = settings.topics
    needed = [t.raw, t.unmatched, t.dlq, t.employees, t.live]
    delay = backoff.initial_s
    # librdkafka prints every refused connection at level 3; our own warning says it once a try.
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "log_level": 2})
    while True:
        try:
            existing = admin.list_topics(timeout=10).topics
            break
        except KafkaException as exc:
            logger.warning("Kafka at %s unavailable, retrying in %.1fs: %s", settings.kafka.bootstrap, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, backoff.max_s)
    missing = [name for name in needed if name not in existing]
    if missing:
        raise ConfigError(f"topic(s) {', '.join(missing)} missing on {settings.kafka.bootstrap}: run `tapstream stack up`")
    ensure_internal_topics(admin, settings)


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The topics Faust would create for the worker, with the configuration Faust gives them."""
    app_id, window_ms = settings.worker.app_id, settings.worker.dedup_window_s * 1000
    return [
        # windowed table: compacted and deleted after its expiry (2 windows, streams/app.py)
        TopicSpec(f"{app_id}-dedup-changelog", settings.topics.raw_partitions,
                  {"cleanup.policy": "compact,delete", "retention.ms": str(2 * window_ms)}),
        TopicSpec(f"{app_id}-employees-changelog", settings.topics.employees_partitions, {"cleanup.policy": "compact"}),
        TopicSpec(f"{app_id}-__assignor-__leader", 1),
    ]


def ensure_internal_topics(admin: AdminClient, settings: Settings, timeout_s: float = 30.0) -> None:
    """Create Faust's internal topics before Faust starts, and wait until metadata lists them.

    Left to Faust, a fresh app id creates them and subscribes at once; about one start in fifty
    then sees "topic ... not found in cluster metadata" and never consumes anything.
    """
    specs = internal_topics(settings)
    ensure_topics(settings.kafka.bootstrap, specs)
    names, deadline = {s.name for s in specs}, time.monotonic() + timeout_s
    while not names <= set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise ConfigError(f"the worker's topics {sorted(names)} did not appear in the cluster metadata")
        time.sleep(0.2)


def open_postgres_duties(settings: Settings) -> ConnectionPool | None:
    """A small pool for what the worker keeps in Postgres besides records (parked punches,
    dead letters, the employee sync); None when Postgres is not one of the sinks."""
    if "postgres" not in settings.worker.sinks:
        logger.warning("no postgres sink: parked punches are not re-matched automatically and dead letters "
                       "stay on their topics only (use `tapstream replay` once mappings are fixed)")
        return None
    pg, backoff = settings.postgres, Backoff(settings.worker.retry_initial_s, settings.worker.retry_max_s)
    return _until_open("postgres (ledger)", lambda: open_pool(  # type: ignore[no-any-return]
        pg.effective_dsn(), 2, connect_timeout_s=pg.connect_timeout_s, acquire_timeout_s=pg.acquire_timeout_s,
    ), backoff)


def _sync_employees_while_running(app: faust.App, settings: Settings) -> TopicMirror:
    """Publish HR's edits of the Postgres employees table to the topic every employee_sync_s;
    returns the topic's mirror, for the caller to close."""
    every = settings.worker.employee_sync_s
    mirror = TopicMirror(settings.kafka.bootstrap, settings.topics.employees)
    try:
        mirror.refresh()  # the whole topic once, at startup rather than in the middle of the load
    except TapstreamError as exc:  # the first sync reads it instead
        logger.warning("cannot read %s yet: %s", settings.topics.employees, exc)

    @app.timer(interval=every)  # type: ignore[untyped-decorator]  # faust's timer is untyped
    async def employee_sync() -> None:
        args = (settings.postgres.effective_dsn(), settings.kafka.bootstrap, settings.topics.employees)
        sync = partial(sync_employees, *args, empty_table_deletes=False, mirror=mirror)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sync)
        except Exception as exc:  # Postgres or Kafka away: the next round tries again
            logger.warning("employee sync failed, retrying in %.0fs: %s", every, exc)

    return mirror


def start_metrics(settings: Settings, *, lag_interval_s: float = LAG_INTERVAL_S) -> tuple[WorkerMetrics, Callable[[], None]]:
    """The worker's metrics, served on ``metrics.worker_port`` with the raw topic's lag read
    every ``lag_interval_s`` in a thread of its own; returns them and a function that stops both."""
    registry = new_registry()
    metrics = WorkerMetrics(registry, settings.worker.sinks)
    server = serve(registry, settings.metrics.host, settings.metrics.worker_port, "TAPSTREAM_METRICS__WORKER_PORT")
    done = threading.Event()
    if server is not None:
        threading.Thread(target=_watch_lag, args=(settings, metrics, done, lag_interval_s), name="lag-probe", daemon=True).start()

    def stop() -> None:
        done.set()
        if server is not None:
            server.shutdown()
            server.server_close()

    return metrics, stop


def _watch_lag(settings: Settings, metrics: WorkerMetrics, done: threading.Event, every_s: float) -> None:
    """Read the group's committed offsets and the end offsets off the event loop, until ``done``."""
    bootstrap, group, topic = settings.kafka.bootstrap, settings.worker.app_id, settings.topics.raw
    failing = False
    while not done.is_set():
        try:
            # Asked quietly first: start_positions' consumer logs every refused connection to stderr.
            if not answers_metadata(bootstrap, every_s):
                raise ConnectionError(f"Kafka at {bootstrap} does not answer")
            metrics.set_lag(topic, start_positions(bootstrap, group, topic, timeout_s=every_s))
        except Exception as exc:  # Kafka away: the lag is unknown until it answers; the worker says why
            metrics.lag_failures.inc()
            if not failing:
                logger.warning("cannot read the consumer lag of %s (retrying every %.0fs): %s", topic, every_s, exc)
            failing = True
        else:
            failing = False
        done.wait(every_s)


def run_worker(settings: Settings, exit_when_idle_s: float | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until idle, if exit_when_idle_s is given)."""
    metrics, stop_metrics = start_metrics(settings)
    stats = WorkerStats(path=stats_path(settings), metrics=metrics, save_every_s=STATS_SAVE_S)
    stats.save()
    backoff = Backoff(settings.worker.retry_initial_s, settings.worker.retry_max_s)
    wait_for_topics(settings, backoff)
    runners = open_sinks(settings, stats)
    duties = open_postgres_duties(settings)
    app = build_app(settings, runners, stats, parked=duties)
    ledger = Ledger(settings, duties, backoff) if duties is not None else None
    mirror = None
    if duties is not None and settings.worker.employee_sync_s > 0:
        mirror = _sync_employees_while_running(app, settings)
    if exit_when_idle_s is not None:
        _exit_when_idle(app, stats, exit_when_idle_s)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    reports = start_report_server(settings, runners)  # the sinks are open: serve `tapstream report`
    try:
        if ledger is not None:
            ledger.start()
        worker.execute_from_commandline()
    finally:
        app.tapstream_sender.close()  # type: ignore[attr-defined]  # set by build_app
        if mirror is not None:
            mirror.close()
        if ledger is not None:
            ledger.stop()
        reports.close()  # before the sinks: its queries run on the ClickHouse sink's thread
        for runner in runners:
            runner.close()
        if duties is not None:
            duties.close()
        stats.save()
        stop_metrics()
