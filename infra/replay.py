"""`tapstream replay`: rebuild the sinks from ``attendance.raw`` the way the live worker built them.

A replay reads an offset range of the raw topic with a plain consumer (``assign()``: no group,
no commits), decides each batch with the worker's own ``streams.logic.plan_batch`` and the
employee map as it stands now, and delivers through the worker's ``SinkRunner``s (retries,
bisection). In order:

1. ``prepare_replay`` refuses while the worker's group (its Faust app id) has members, then
   snapshots the topic: start offsets from ``--from`` (a Kafka timestamp), stop offsets from
   ``--to`` or the end offsets as they stand now; later messages are left to the worker;
2. ``run_replay`` reads and writes the ranges; parked and quarantined punches are only counted
   (the live worker already sent them to their topics);
3. ``advance_group_offsets`` — only after a replay to the snapshot end into every configured
   sink — moves the group's committed offsets forward to the snapshot end, where the replay
   covered everything from them on, so a restarted worker does not write the range again.

Duplicates: the sinks are the authority, so no dedup table is consulted. The replay drops only
what it has itself written or parked, seen again within the worker's dedup window (by Kafka
timestamps), unless the rematcher re-sent it: that is what the live worker dropped (a device's
re-send), and ClickHouse keeps the *latest*
insert, so writing re-sends would leave their later ``received_at``/``source`` where the live
run kept the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Message, TopicPartition,
)
from confluent_kafka.admin import AdminClient

from infra.employee_sync import read_topic
from infra.worker import open_sinks
from schemas.employee import EmployeeRecord
from streams.delivery import DeliveryOutcome, SinkRunner, stored
from streams.logic import BatchPlan, Incoming, Seen, is_rematch, plan_batch, to_remember
from streams.stats import WorkerStats
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

EARLIEST = "earliest"
TIMEOUT_S = 30.0
IDLE_LIMIT_S = 60.0  # no message for this long while offsets remain: the broker stopped answering


def parse_moment(text: str) -> datetime | None:
    """A --from/--to value: ``earliest`` -> None, else an ISO-8601 time (naive = UTC), in UTC."""
    if text.strip().lower() == EARLIEST:
        return None
    moment = datetime.fromisoformat(text.strip())  # ValueError names the bad text
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, stop) of one raw partition; ``low`` is its first offset still kept."""

    partition: int
    low: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def plan_ranges(
    watermarks: Mapping[int, tuple[int, int]], starts: Mapping[int, int] | None, stops: Mapping[int, int] | None
) -> list[PartitionRange]:
    """Clamp the offsets found for --from/--to into each partition's (low, high) snapshot.

    ``starts`` None = from the earliest offset; ``stops`` None = to the snapshot end. An offset of
    -1 (Kafka's answer when no message is at or after the time) means the snapshot end.
    """
    out = []
    for partition, (low, high) in sorted(watermarks.items()):
        start = low if starts is None else _or_end(starts.get(partition, -1), high)
        stop = high if stops is None else _or_end(stops.get(partition, -1), high)
        start = min(max(start, low), high)
        out.append(PartitionRange(partition, low, start, min(max(stop, start), high)))
    return out


def _or_end(offset: int, high: int) -> int:
    return high if offset < 0 else offset


@dataclass(frozen=True)
class Move:
    """A committed offset of the worker group advanced by a replay."""

    partition: int
    old: int | None  # None: the group had no committed offset
    new: int


def offsets_to_move(
    ranges: Sequence[PartitionRange], committed: Mapping[int, int | None], complete: bool
) -> list[Move]:
    """The group offsets a replay made redundant: only after a complete replay (every sink, to
    the snapshot end), only forward, and only where the replay read everything from the
    group's position on; a group behind the replay's start still has messages to process."""
    if not complete:
        return []
    moves = []
    for r in ranges:
        old = committed.get(r.partition)
        # Where the worker would resume: no offset, or one retention deleted, means the earliest.
        resume = r.low if old is None else max(old, r.low)
        if r.start <= resume < r.stop:
            moves.append(Move(r.partition, old, r.stop))
    return moves


def live_would_drop(first_ms: int, now_ms: int, window_ms: int) -> bool:
    """The worker's dedup rule: an id written in the current or previous tumbling window is seen."""
    return first_ms // window_ms >= now_ms // window_ms - 1


class ReplayDedup:
    """The event ids this replay wrote, per partition, with the Kafka timestamp of their last write.

    Per partition because a punch's copies share its device's key, hence its partition; that
    lets each partition forget ids older than its newest message by more than the window, so
    memory holds a few windows of punches, not the whole range.
    """

    def __init__(self, window_s: float) -> None:
        self.window_ms = max(1, int(window_s * 1000))
        self._written: dict[int, dict[uuid.UUID, int]] = defaultdict(dict)
        self._newest: dict[int, int] = {}  # per partition: the window of its newest message
        self._times: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return sum(map(len, self._written.values()))

    def begin(self, times: dict[tuple[int, int], int]) -> None:
        """Take the timestamps of the next batch's messages, by (partition, offset)."""
        self._times = times
        for (partition, _), at_ms in times.items():
            window = at_ms // self.window_ms
            if window > self._newest.setdefault(partition, window):
                self._newest[partition] = window
                # one window of slack: Kafka timestamps of different producers are not in order
                marks = self._written[partition]
                for event_id in [e for e, first in marks.items() if first // self.window_ms < window - 2]:
                    del marks[event_id]

    def already_seen(self, msg: Incoming, event_id: uuid.UUID) -> bool:
        first = self._written[msg.partition].get(event_id)
        return first is not None and live_would_drop(first, self._times[(msg.partition, msg.offset)], self.window_ms)

    def remember(self, seen: Sequence[Seen]) -> None:
        """What the worker remembers (streams.logic.to_remember): stored and parked ids."""
        for s in seen:
            self._written[s.partition][s.event_id] = self._times[(s.partition, s.offset)]


def refusal(group: str, hosts: Sequence[str]) -> str | None:
    """Why a replay may not start while ``group`` has these members (None when it has none)."""
    if not hosts:
        return None
    where = ", ".join(sorted(set(hosts)))
    return (f"worker group {group!r} has {len(hosts)} active member(s) ({where}): stop `tapstream worker` "
            "first (a replay must be the only writer, and the embedded ClickHouse store admits one process)")


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay will read and where it will write, fixed when the command starts."""

    topic: str
    group: str
    start: datetime | None  # None: the earliest offset
    end: datetime | None  # None: the snapshot end
    ranges: list[PartitionRange]
    sinks: list[str]
    employees: dict[str, EmployeeRecord | None]
    complete: bool  # every configured sink, to the snapshot end: group offsets may move

    @property
    def total(self) -> int:
        return sum(r.count for r in self.ranges)


@dataclass
class ReplaySummary:
    """What a replay did: the worker's own counters (streams.stats), and what is the replay's own."""

    stats: WorkerStats = field(default_factory=WorkerStats)
    written: int = 0  # punches decided for writing; what each sink took is in stats.written
    seconds: float = 0.0
    moved: list[Move] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        sinks = {name: {"written": n, "inserted": s.inserted.get(name, 0), "attempts": s.sink_attempts.get(name, 0)}
                 for name, n in s.written.items()}
        return {
            "messages": s.flushed, "written": self.written, "duplicates": s.duplicates, "unmatched": s.unmatched,
            # rejected rows are logged and counted, not sent to attendance.dlq again
            "quarantined": s.quarantined, "rejected": s.rejected, "sinks": sinks,
            "seconds": self.seconds, "moved": [asdict(m) for m in self.moved],
        }


def prepare_replay(
    settings: Settings, start: datetime | None, end: datetime | None, sinks: Sequence[str]
) -> ReplayPlan:
    """Check the worker is stopped, snapshot the offset ranges and read the employee map."""
    topic, group = settings.topics.raw, settings.worker.app_id
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "log_level": 3})
    consumer = _consumer(settings, group)
    try:
        problem = refusal(group, _member_hosts(admin, group))
        if problem:
            raise TapstreamError(problem)
        partitions = _partitions(admin, topic)
        watermarks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), TIMEOUT_S) for p in partitions}
        starts = None if start is None else _offsets_at(consumer, topic, partitions, start)
        stops = None if end is None else _offsets_at(consumer, topic, partitions, end)
    except KafkaException as exc:
        raise TapstreamError(f"Kafka at {settings.kafka.bootstrap}: {exc.args[0]}") from exc
    finally:
        consumer.close()
    ranges = plan_ranges(watermarks, starts, stops)
    employees = read_topic(settings.kafka.bootstrap, settings.topics.employees)
    complete = end is None and set(settings.worker.sinks) <= set(sinks)
    return ReplayPlan(topic, group, start, end, ranges, list(sinks), employees, complete)


def _member_hosts(admin: AdminClient, group: str) -> list[str]:
    description = admin.describe_consumer_groups([group], request_timeout=TIMEOUT_S)[group].result()
    return [str(m.host).lstrip("/") for m in description.members or []]


def _partitions(admin: AdminClient, topic: str) -> list[int]:
    meta = admin.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise TapstreamError(f"topic {topic} not found: run `tapstream stack up`")
    return sorted(meta.partitions)


def _offsets_at(consumer: Consumer, topic: str, partitions: Sequence[int], moment: datetime) -> dict[int, int]:
    """Per partition, the first offset whose Kafka timestamp is at or after ``moment`` (-1: none)."""
    wanted = [TopicPartition(topic, p, epoch_ms(moment)) for p in partitions]
    return {tp.partition: tp.offset for tp in consumer.offsets_for_times(wanted, timeout=TIMEOUT_S)}


def run_replay(settings: Settings, plan: ReplayPlan, progress: Callable[[int], None] | None = None) -> ReplaySummary:
    """Read the plan's ranges and deliver them to its sinks; ``progress(offsets done)`` per batch."""
    started, summary = time.monotonic(), ReplaySummary()
    runners = open_sinks(settings, summary.stats, plan.sinks)
    consumer = _consumer(settings, plan.group)
    try:
        consumer.assign([TopicPartition(plan.topic, r.partition, r.start) for r in plan.ranges if r.count > 0])
        _replay(consumer, runners, settings, plan, summary, progress)
    finally:
        consumer.close()
        for runner in runners:
            runner.close()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _replay(consumer: Consumer, runners: Sequence[SinkRunner], settings: Settings, plan: ReplayPlan,
            summary: ReplaySummary, progress: Callable[[int], None] | None) -> None:
    dedup = ReplayDedup(settings.worker.dedup_window_s)
    employee_of = _lookup(plan.employees)
    with asyncio.Runner() as loop:
        for received, done in _read(consumer, plan, settings.worker.batch_max):
            if received:
                dedup.begin({(m.partition, m.offset): ts for m, ts in received})
                decided = plan_batch([m for m, _ in received], dedup.already_seen, employee_of, settings.validation)
                outcomes = loop.run(_deliver(runners, decided))
                dedup.remember(to_remember(decided, stored(decided.to_write, outcomes)))
                summary.stats.note_batch(decided, outcomes, plan.sinks)
                summary.written += len(decided.to_write)
                _log_rejections(outcomes, plan.sinks)
            if progress:
                progress(done)


def _lookup(employees: Mapping[str, EmployeeRecord | None]) -> Callable[[str], EmployeeRecord | None]:
    def employee_of(code: str) -> EmployeeRecord | None:
        record = employees.get(code)
        # the worker ignores a record filed under another code's key
        if record is None or record.attendance_code != code:
            return None
        # A rebuild keeps a leaver's history: deactivation parks new punches live, but the
        # replay cannot tell which punches came before it, and losing those is worse.
        return record if record.active else record.model_copy(update={"active": True})
    return employee_of


async def _deliver(runners: Sequence[SinkRunner], plan: BatchPlan) -> list[DeliveryOutcome]:
    return list(await asyncio.gather(*(r.deliver(plan.to_write) for r in runners)))


def _log_rejections(outcomes: Sequence[DeliveryOutcome], names: Sequence[str]) -> None:
    for name, outcome in zip(names, outcomes, strict=True):
        for row, error in outcome.rejected:
            logger.warning("%s rejected event %s (partition %d offset %d): %s", name, row.punch.event_id,
                           row.source_partition, row.source_offset, error)


def _consumer(settings: Settings, group: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": settings.kafka.bootstrap,
        # librdkafka wants a group id even for assign(); nothing joins it or commits to it
        "group.id": f"{group}-replay",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })


Received = list[tuple[Incoming, int]]  # messages with their Kafka timestamps (ms)


def _read(consumer: Consumer, plan: ReplayPlan, batch_max: int) -> Iterator[tuple[Received, int]]:
    """Yield (messages inside the ranges, offsets done) until every range is read to its stop."""
    stops = {r.partition: r.stop for r in plan.ranges if r.count > 0}
    position = {r.partition: r.start for r in plan.ranges}
    starts, last_seen = dict(position), time.monotonic()
    while stops:
        batch: Received = []
        finished: set[int] = set()
        for msg in consumer.consume(batch_max, timeout=1.0):
            if msg.error() is not None:
                finished |= {p for p in [_end_of(msg)] if p in stops}
                continue
            incoming = _incoming(msg)
            stop = stops.get(incoming.partition)
            if stop is None or incoming.offset >= stop:
                finished |= {incoming.partition} & stops.keys()
                continue
            batch.append((incoming, msg.timestamp()[1]))
            position[incoming.partition] = incoming.offset + 1
            if incoming.offset + 1 >= stop:
                finished.add(incoming.partition)
        for partition in finished:
            position[partition] = stops.pop(partition)
        if finished:  # stop fetching what the range no longer needs
            consumer.pause([TopicPartition(plan.topic, p) for p in finished])
        if batch or finished:
            last_seen = time.monotonic()
        elif time.monotonic() - last_seen > IDLE_LIMIT_S:
            raise TapstreamError(f"{plan.topic} sent nothing for {IDLE_LIMIT_S:.0f}s; "
                                 f"partitions {sorted(stops)} unfinished")
        yield batch, sum(position[p] - starts[p] for p in position)


def _end_of(msg: Message) -> int | None:
    """The partition an end-of-partition event is about; None (logged) for other errors, which
    librdkafka retries itself; raise on a fatal one."""
    error = msg.error()
    assert error is not None
    if error.code() == KafkaError._PARTITION_EOF:
        return msg.partition()
    if error.fatal():
        raise TapstreamError(f"reading {msg.topic()}: {error.str()}")
    logger.warning("reading %s [%s]: %s", msg.topic(), msg.partition(), error.str())
    return None


def _incoming(msg: Message) -> Incoming:
    return Incoming(topic=str(msg.topic()), partition=int(msg.partition() or 0), offset=int(msg.offset() or 0),
                    key=msg.key(), value=msg.value(), rematch=is_rematch(msg.headers()))


def advance_group_offsets(settings: Settings, plan: ReplayPlan) -> list[Move]:
    """Move the worker group's offsets past a complete replay (see offsets_to_move)."""
    if not plan.complete:
        return []
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "log_level": 3})
    topic, group = plan.topic, plan.group
    try:
        problem = refusal(group, _member_hosts(admin, group))
        if problem:
            raise TapstreamError(f"replay done, but offsets not moved: {problem}")
        moves = offsets_to_move(plan.ranges, _committed(admin, group, topic, [r.partition for r in plan.ranges]), True)
        if moves:
            request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, m.partition, m.new) for m in moves])
            result = admin.alter_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group].result()
            errors = [f"{tp.partition}: {tp.error}" for tp in result.topic_partitions if tp.error]
            if errors:
                raise TapstreamError(f"replay done, but moving {group}'s offsets failed: {'; '.join(errors)}")
    except KafkaException as exc:
        raise TapstreamError(f"replay done, but moving {group}'s offsets failed: {exc.args[0]}") from exc
    for move in moves:
        logger.info("moved %s offset of %s [%d]: %s -> %d", group, topic, move.partition, move.old, move.new)
    return moves


def _committed(admin: AdminClient, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    result = admin.list_consumer_group_offsets([request], request_timeout=TIMEOUT_S)[group].result()
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in result.topic_partitions}
