"""Buffer raw events, flush them as one batch, and ack them only once they are stored.

A flush, in order: plan the batch (streams.logic); write the enriched punches to the first
sink, the system of record (Postgres by default), while the other sinks (ClickHouse) start
writing them too (streams.delivery: each retries until its rows land); send parked and
quarantined records to their topics and every punch the first sink stored to the live feed
(``attendance.live``). The flush is then done and the next one may start: the other sinks'
writes, Kafka's confirmation of the sends and the ack come while later batches are planned
and written (``_finish``). Waiting for them held every punch behind the slowest sink (the
embedded ClickHouse stalls for a few hundred ms at times) and a broker round trip.

Up to ``batches_in_flight`` batches are between their flush and their ack; acks stay in
offset order (a batch is acked only after the one before it). A batch is acked only when every
sink holds it and Kafka has every record it sent; a send Kafka refuses is sent again until it
is taken. Rows a trailing sink rejects are dead-lettered before the ack. The dedup table
learns a batch's ids once every sink holds it (``streams.logic.to_remember``); until then they
are ``_pending``, so a re-send arriving meanwhile is still a duplicate.

Anything that stops a batch half-way (a crash, a stop during a sink outage) leaves its events
unacked, so Kafka re-delivers them and the idempotent sinks absorb the repeat; the live feed
may then show a punch twice, with the same event id (its readers de-duplicate on it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faust.streams import _current_event  # the context var Faust's tables read the event from

from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.live import live_punch
from schemas.punch import EnrichedPunch
from schemas.quarantine import QuarantineRecord, Reason, Stage, quarantine
from streams.catchup import CatchUp
from streams.delivery import DeliveryOutcome, SinkRunner, stored
from streams.employees import employee_from_table
from streams.logic import BatchPlan, Incoming, Seen, is_rematch, plan_batch, to_remember
from streams.stats import WorkerStats
from streams.trailing import TrailingSink
from tapstream.settings import ValidationSettings

logger = logging.getLogger(__name__)

# (topic, key, value, headers) -> awaitable that resolves when Kafka has the record
Send = Callable[[str, bytes | None, bytes, dict[str, bytes]], Any]
Record = tuple[str, bytes | None, bytes, dict[str, bytes]]
REASON_HEADER = "tapstream-reason"


@dataclass
class _Batch:
    """A flushed batch on its way to its ack."""

    events: list[Any]
    plan: BatchPlan
    by_position: dict[tuple[int, int], Any]  # (partition, offset) -> its Faust event
    outcomes: list[DeliveryOutcome]  # the first sink's; the trailing sinks' are added as they land
    trailing: Sequence[asyncio.Future[DeliveryOutcome]]
    records: list[Record]  # sent to Kafka for this batch
    futures: list[Any]  # their delivery futures
    marks: list[float]  # the end of each stage, for the log line


class Batcher:
    """Collects events from the agent (add); run() flushes them as soon as the last flush is done.

    ``sinks``: the first is the system of record, whose stored rows go live at once; the others
    trail it (streams.trailing: one write at most every ``trailing_every_s``), by up to
    ``batches_in_flight`` batches. ``live_topic``: where stored punches are
    published for the monitor; None = no live feed.
    """

    def __init__(
        self,
        *,
        sinks: Sequence[SinkRunner],
        dedup: Any,
        employees: Any,
        send: Send,
        unmatched_topic: str,
        dlq_topic: str,
        batch_max: int,
        batch_within_s: float,
        dedup_window_s: float,
        stats: WorkerStats,
        ready: CatchUp | None = None,
        rules: ValidationSettings | None = None,
        live_topic: str | None = None,
        batches_in_flight: int = 32,
        trailing_every_s: float = 0.0,
    ) -> None:
        if not sinks:
            raise ValueError("a batcher needs at least one sink")
        self.sinks = list(sinks)
        self.dedup = dedup
        self.employees = employees
        self.send = send
        self.unmatched_topic = unmatched_topic
        self.dlq_topic = dlq_topic
        self.batch_max = batch_max
        self.batch_within_s = batch_within_s
        self.dedup_window_s = dedup_window_s
        self.stats = stats
        self.ready = ready
        self.rules = rules
        self.live_topic = live_topic
        self.batches_in_flight = batches_in_flight
        self._trailing = [TrailingSink(s, trailing_every_s) for s in self.sinks[1:]]
        self._buffer: list[Any] = []
        self._arrived = asyncio.Event()  # set by add: something to flush
        self._taken = asyncio.Event()  # set by flush: the buffer has room again
        self._lock = asyncio.Lock()
        self._stream: Any = None
        self._by_position: dict[tuple[int, int], Any] = {}
        self._employees_now: dict[str, EmployeeRecord | None] = {}  # lookups of the current flush
        self._retry_s = 1.0
        self._in_flight: deque[asyncio.Future[bool]] = deque()  # _finish of each unacked batch, in order
        self._pending: dict[str, int] = {}  # event id -> dedup mark, for ids not yet in the table
        self._sink_names = [s.sink.name for s in self.sinks]

    def bind(self, stream: Any) -> None:
        """Attach the (noack) stream whose events this batcher acks."""
        self._stream = stream

    async def add(self, event: Any) -> None:
        self._buffer.append(event)
        self._arrived.set()
        self.stats.note_consumed()
        while len(self._buffer) >= self.batch_max:
            # A full buffer: the agent stops reading until run() takes it (backpressure). It
            # does not flush it itself, which would leave run() a sliver to flush after it.
            self._taken.clear()
            await self._taken.wait()

    async def run(self) -> None:
        """Flush whenever something is buffered and no flush is running (group commit).

        An idle worker flushes a punch ``batch_within_s`` after it arrives, so a live punch
        does not wait for a timer; under load each batch is what arrived during the previous
        flush (up to ``batch_max``), so batches grow with the rate and throughput holds.
        """
        while True:
            if not self._buffer:
                self._arrived.clear()
                await self._arrived.wait()
                if self.batch_within_s > 0:
                    await asyncio.sleep(self.batch_within_s)  # let a burst's neighbours join it
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            events, self._buffer = self._buffer, []
            self._taken.set()
            if not events:
                return
            try:
                await self._flush(events)
            except Exception:
                # A bug, not bad data (bad data is quarantined by plan_batch): keep the events,
                # in order, unacked, and try again later rather than skip past them.
                logger.exception("flush of %d events failed; retrying in %.1fs", len(events), self._retry_s)
                self._buffer[:0] = events
                await asyncio.sleep(self._retry_s)
                self._retry_s = min(self._retry_s * 2, 30.0)
            else:
                self._retry_s = 1.0

    async def settle(self, timeout_s: float | None = None) -> None:
        """Wait until every flushed batch is acked; after ``timeout_s`` (a stop during a sink
        or Kafka outage) give up on the rest, which stay unacked and come back at the next start."""
        if not self._in_flight:
            return
        _, unfinished = await asyncio.wait(list(self._in_flight), timeout=timeout_s)
        for task in unfinished:
            task.cancel()
        if unfinished:
            logger.warning("stopping with %d batch(es) not yet stored everywhere: left unacked", len(unfinished))
            await asyncio.wait(unfinished)
            for sink in self._trailing:
                await sink.stop()
        self._in_flight.clear()

    async def _flush(self, events: list[Any]) -> None:
        if self.ready is not None and not self.ready.ready:
            logger.info("waiting for the employee map to load before enriching")
            await self.ready.wait()
        await self._room()
        marks = [time.monotonic()]  # the end of each stage, for the log line
        # The Faust event behind each message: tables must be read and written "as" that event.
        self._by_position = {(e.message.partition, e.message.offset): e for e in events}
        self._employees_now = {}
        plan = plan_batch([_incoming(e) for e in events], self._already_seen, self._employee_of, self.rules)
        marks.append(time.monotonic())
        trailing = [sink.deliver(plan.to_write) for sink in self._trailing]
        try:
            lead = await self.sinks[0].deliver(plan.to_write)
        except BaseException:  # a stop: the trailing writes are abandoned with the batch
            for future in trailing:
                future.cancel()
            raise
        marks.append(time.monotonic())
        recorded = stored(plan.to_write, [lead])
        records = [*self._parked(plan), *self._rejected([lead], 0), *self._live(recorded)]
        batch = _Batch(events, plan, self._by_position, [lead], trailing, records,
                       [await self._send(record) for record in records], marks)
        marks.append(time.monotonic())
        self._pending.update({str(s.event_id): _dedup_mark(s.offset) for s in to_remember(plan, recorded)})
        previous = self._in_flight[-1] if self._in_flight else None
        self._in_flight.append(asyncio.ensure_future(self._finish(batch, previous)))

    async def _room(self) -> None:
        """Wait until fewer than ``batches_in_flight`` batches are unacked (a trailing sink
        that is down or slow holds the flushes here, and so the agent: backpressure)."""
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        while len(self._in_flight) >= self.batches_in_flight:
            await asyncio.wait([self._in_flight[0]])
            self._in_flight.popleft()

    async def _finish(self, batch: _Batch, previous: asyncio.Future[bool] | None) -> bool:
        """Wait for the trailing sinks and Kafka, then ack the batch once the one before it is
        acked. True when acked; False leaves it unacked, so its offsets are never committed."""
        try:
            batch.outcomes += await asyncio.gather(*batch.trailing)
            batch.marks.append(time.monotonic())
            late = self._rejected(batch.outcomes[1:], 1)
            batch.records += late
            batch.futures += [await self._send(record) for record in late]
            self._remember(batch.by_position, to_remember(batch.plan, stored(batch.plan.to_write, batch.outcomes)))
            await self._confirmed(batch.records, batch.futures)
            batch.marks.append(time.monotonic())
            if previous is not None and not await previous:
                logger.error("a batch of %d stays unacked: the batch before it was not acked", len(batch.events))
                return False
            for event in batch.events:
                await self._stream.ack(event)
            self.stats.note_batch(batch.plan, batch.outcomes, self._sink_names)
        except Exception:  # a bug: the batch stays unacked, so its offsets are never committed
            logger.exception("finishing a batch of %d failed; it stays unacked until a restart", len(batch.events))
            return False
        finally:
            for s in to_remember(batch.plan, batch.plan.to_write):
                self._pending.pop(str(s.event_id), None)
        batch.marks.append(time.monotonic())
        self._log(batch)
        return True

    def _log(self, batch: _Batch) -> None:
        plan, marks = batch.plan, batch.marks
        stages = [(b - a) * 1000 for a, b in zip(marks, marks[1:])]
        logger.info(
            "batch of %d: %d written, %d duplicates, %d unmatched, %d quarantined in %.0f ms"
            " (plan %.0f, %s %.0f, sends %.0f, then %s %.0f, kafka %.0f, ack %.0f)",
            len(batch.events), len(plan.to_write), plan.duplicates, len(plan.unmatched),
            len(plan.quarantined), sum(stages), stages[0], self._sink_names[0], stages[1], stages[2],
            "+".join(self._sink_names[1:]) or "no other sink", *stages[3:],
        )

    async def _confirmed(self, records: list[Record], futures: list[Any]) -> None:
        delay = 1.0
        while True:
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [(r, e) for r, e in zip(records, results, strict=True) if isinstance(e, Exception)]
            if not failed:
                return
            logger.warning("Kafka did not take %d of %d records (%s); sending them again in %.0fs",
                           len(failed), len(records), failed[0][1], delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            records, futures = [r for r, _ in failed], [await self._send(r) for r, _ in failed]

    async def _send(self, record: Record) -> Any:
        """The record's delivery future; a send refused at once (DeliveryError) is a failed
        future, sent again by ``_confirmed`` like one Kafka refused later."""
        try:
            return await self.send(*record)
        except Exception as exc:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    def _already_seen(self, msg: Incoming, event_id: uuid.UUID) -> bool:
        """Seen before at another offset: a device's re-send, dropped. The same message again
        (an operator's replay after an offset reset, a redelivery after a crash) passes: the
        sinks are idempotent, and a dedup table must never swallow a replay."""
        # Windowed tables read the current event (its timestamp, its partition): make it this one.
        mark = self._pending.get(str(event_id))
        if mark is not None:  # in a batch not yet stored everywhere
            return mark != _dedup_mark(msg.offset)
        with _as_current(self._by_position[(msg.partition, msg.offset)]):
            window = self.dedup[str(event_id)]
            marks = {window.now(), window.delta(self.dedup_window_s)} - {0}
        return bool(marks) and _dedup_mark(msg.offset) not in marks

    def _employee_of(self, code: str) -> EmployeeRecord | None:
        """The employee behind ``code``, looked up (and validated) once per flush: a batch
        repeats codes, and the live feed needs the name of each one enriched."""
        if code not in self._employees_now:
            self._employees_now[code] = employee_from_table(self.employees, code)
        return self._employees_now[code]

    def _parked(self, plan: BatchPlan) -> list[Record]:
        """The plan's unmatched punches for their topic, its quarantined messages for the DLQ."""
        records = [(self.unmatched_topic, u.msg.key, encode(u.punch), {REASON_HEADER: u.reason.encode()})
                   for u in plan.unmatched]
        return records + [self._dead_letter(q) for q in plan.quarantined]

    def _rejected(self, outcomes: Sequence[DeliveryOutcome], first: int) -> list[Record]:
        """DLQ records for the rows sinks ``first``, ``first + 1``, ... rejected (``outcomes`` in that order)."""
        names = self._sink_names[first:first + len(outcomes)]
        return [self._dead_letter(q) for q in _rejections(outcomes, names)]

    def _dead_letter(self, q: QuarantineRecord) -> Record:
        key = q.device_serial.encode() if q.device_serial else None
        return (self.dlq_topic, key, encode(q), {REASON_HEADER: q.reason.value.encode()})

    def _live(self, recorded: Sequence[EnrichedPunch]) -> list[Record]:
        """One live-feed record per stored punch, keyed by device serial."""
        if self.live_topic is None or not recorded:
            return []
        recorded_at = datetime.now(UTC)
        records: list[Record] = []
        for row in recorded:
            employee = self._employee_of(row.punch.user_code)
            event = live_punch(row, employee.name if employee is not None else "", recorded_at)
            records.append((self.live_topic, row.punch.device_serial.encode(), encode(event), {}))
        return records

    def _remember(self, by_position: dict[tuple[int, int], Any], seen: Sequence[Seen]) -> None:
        for s in seen:
            with _as_current(by_position[(s.partition, s.offset)]):
                self.dedup[str(s.event_id)] = _dedup_mark(s.offset)


def _dedup_mark(offset: int) -> int:
    """What the dedup table holds for an event id: where it was first written (0 = unseen)."""
    return offset + 1


@contextmanager
def _as_current(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event, as tables expect when read or written."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _incoming(event: Any) -> Incoming:
    msg = event.message
    return Incoming(topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
                    rematch=is_rematch(msg.headers))


def _rejections(outcomes: Sequence[DeliveryOutcome], names: Sequence[str]) -> list[QuarantineRecord]:
    out = []
    for name, outcome in zip(names, outcomes, strict=True):
        for row, error in outcome.rejected:
            out.append(
                quarantine(
                    Reason.SINK_REJECTED,
                    f"{name}: {error}",
                    Stage.STREAM,
                    encode(row.punch),
                    device_serial=row.punch.device_serial,
                    source_partition=row.source_partition,
                    source_offset=row.source_offset,
                )
            )
    return out
