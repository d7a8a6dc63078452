"""The Faust app: topics, tables and the one agent. Logic lives in streams.logic / delivery.

Wiring, and why it is this way (see shared/reference/stack-notes.md §2):

* one agent on ``attendance.raw`` with concurrency 1 (concurrency > 1 can commit past an
  in-flight event), iterating a ``noack()`` stream: events are buffered by ``Batcher`` and
  acked only after every sink holds the batch, so a crash, a stop or a sink outage never
  commits an offset whose punch is not stored; a task flushes as soon as the previous flush
  is done (group commit), so a live punch waits for no timer and batches grow with the load;
  the flush waits only for the first sink (the system of record), the others trail it;
* ``dedup``: a tumbling windowed table of recently seen event ids, relative to wall-clock
  time, so memory stays bounded (old windows expire) — an optimisation only: the sinks are
  idempotent and remain the authority;
* ``employees``: a GlobalTable (every worker holds the whole map) fed by an agent on the
  compacted ``employees`` topic; punches wait until that feed has caught up with the topic
  as it stood at start (streams.catchup), so a fresh worker does not park known employees;
* the live feed: every punch the first sink stored is also sent to ``attendance.live``
  (schemas.live) before its batch is acked, for the monitor's /events;
* ``streams.faust_tuning``: two Faust defaults (a 1.5 s fetch wait, a 100-record producer
  buffer) that held the stream for a second at a time;
* ``rematch``: a timer re-sending parked punches to the raw topic once their code is mapped
  (streams.rematch), when the worker has Postgres, where parked punches are listed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import faust

from sinks.postgres import ConnectionSource
from streams.batcher import Batcher
from streams.catchup import CatchUp, start_positions
from streams.delivery import SinkRunner
from streams.employees import apply_employee_change, employee_from_table
from streams.faust_tuning import tune_faust
from streams.rematch import Rematcher
from streams.sender import KafkaSender
from streams.stats import WorkerStats
from tapstream.heap import freeze_startup_heap
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

# How long a stop waits for the batches in flight to land everywhere: longer than a healthy
# sink needs, short enough that a stop during an outage does not hang (they stay unacked).
STOP_SETTLE_S = 10.0


def build_app(
    settings: Settings, sinks: Sequence[SinkRunner], stats: WorkerStats, parked: ConnectionSource | None = None
) -> faust.App:
    """Create the Faust app for ``settings`` writing to ``sinks``; progress goes to ``stats``.

    ``parked``: a Postgres pool holding ``unmatched_punches``; given, parked punches are
    re-sent as soon as their code is mapped (streams.rematch).
    """
    worker = settings.worker
    settings.path("worker").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        worker.app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store=worker.store,
        datadir=str(settings.path("worker")),
        topic_partitions=settings.topics.raw_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Every dedup-table write is a changelog record. With Faust's default linger (0), 100k
        # events took 42k produce requests; with 10 ms, 6k, and the worker carried 20-30% more
        # events/s (`tapstream bench pipeline`, docs/benchmarks.md). Commits and parked sends
        # still wait for delivery, at most 10 ms longer.
        producer_linger=0.01,
        broker_commit_every=worker.batch_max,
        broker_commit_interval=1.0,
        broker_session_timeout=worker.session_timeout_s,
        broker_heartbeat_interval=worker.heartbeat_interval_s,
        stream_buffer_maxsize=max(4096, worker.batch_max),
        web_enabled=False,
        table_cleanup_interval=min(60.0, worker.dedup_window_s / 4),
        logging_config=None,
    )
    tune_faust(fetch_max_wait_ms=worker.fetch_max_wait_ms, batch_max=worker.batch_max)
    raw = app.topic(settings.topics.raw, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
    window = float(worker.dedup_window_s)
    dedup = (
        app.Table("dedup", default=int, partitions=settings.topics.raw_partitions)
        .tumbling(timedelta(seconds=window), expires=timedelta(seconds=2 * window))
        .relative_to_now()
    )
    # Not the employees topic itself as changelog: that hangs Faust 0.15's assignor. Values are
    # validated EmployeeRecord dicts under Faust's default JSON codec, because changelog recovery
    # decodes with that codec whatever schema the table is given.
    employees = app.GlobalTable("employees", default=None, partitions=settings.topics.employees_partitions)
    employees_topic = app.topic(
        settings.topics.employees, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    employees_loaded = CatchUp(start_positions(settings.kafka.bootstrap, worker.app_id, settings.topics.employees))
    # live, parked, dead-letter and re-matched records: librdkafka, not Faust's producer (streams.sender)
    sender = KafkaSender(settings.kafka.bootstrap)
    send = sender.send

    batcher = Batcher(
        sinks=sinks, dedup=dedup, employees=employees, send=send,
        unmatched_topic=settings.topics.unmatched, dlq_topic=settings.topics.dlq,
        batch_max=worker.batch_max, batch_within_s=worker.batch_within_s,
        dedup_window_s=window, stats=stats, ready=employees_loaded, rules=settings.validation,
        live_topic=settings.topics.live, batches_in_flight=worker.batches_in_flight,
        trailing_every_s=worker.trailing_every_s,
    )

    @app.agent(employees_topic, concurrency=1)
    async def employee_feed(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            apply_employee_change(employees, event.key, event.value)
            employees_loaded.consumed(event.message.partition, event.message.offset)

    @app.agent(raw, concurrency=1)
    async def punches(stream: Any) -> None:  # faust.Stream; StreamT's stub lacks noack()
        manual = stream.noack()
        batcher.bind(manual)
        async for event in manual.events():
            await batcher.add(event)

    if stats.save_every_s > 0:
        @app.timer(interval=stats.save_every_s)  # type: ignore[untyped-decorator]  # faust's timer is untyped
        async def save_stats() -> None:
            stats.save_held()

    @app.task  # type: ignore[untyped-decorator]  # faust's task decorator is untyped
    async def freeze_when_loaded() -> None:
        await employees_loaded.wait()  # the map is part of the long-lived heap
        freeze_startup_heap("worker")

    @app.task  # type: ignore[untyped-decorator]  # faust's task decorator is untyped
    async def flush_when_idle() -> None:
        try:
            await batcher.run()
        finally:  # a stop: batches in flight are acked before Faust's last commit, if they land soon
            await batcher.settle(STOP_SETTLE_S)

    if parked is not None:
        _wire_rematch(app, settings, Rematcher(
            parked, lambda code: employee_from_table(employees, code), send, settings.topics.raw, settings.worker.rematch_cooldown_s,
        ), employees_loaded)

    app.tapstream_batcher = batcher  # type: ignore[attr-defined]  # reached by tests and the runner
    app.tapstream_sender = sender  # type: ignore[attr-defined]  # closed by the runner after the app stops
    return app


def _wire_rematch(app: faust.App, settings: Settings, rematcher: Rematcher, loaded: CatchUp) -> None:
    @app.timer(interval=settings.worker.rematch_interval_s)  # type: ignore[untyped-decorator]  # faust's timer is untyped
    async def rematch() -> None:
        if not loaded.ready:
            return  # the map is still loading: every parked code would look unmapped anyway
        try:
            await rematcher.run_once()
        except Exception as exc:  # Postgres down, a send failed: the next round tries again
            logger.warning("re-match round failed, retrying in %.0fs: %s", settings.worker.rematch_interval_s, exc)
