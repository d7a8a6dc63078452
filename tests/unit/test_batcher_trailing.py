"""The sinks after the first trail it: a punch goes live once the system of record holds it,
and its batch is acked, in offset order, only once every sink and Kafka hold it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence

from schemas.codec import decode
from schemas.employee import EmployeeRecord
from schemas.live import LivePunch
from schemas.punch import EnrichedPunch, RawPunch
from schemas.quarantine import QuarantineRecord
from sinks.base import WriteResult
from streams.batcher import Batcher
from streams.delivery import Backoff, SinkRunner
from streams.stats import WorkerStats
from tapstream.errors import TransientSinkError
from tests.batcher_fakes import DLQ, LIVE, UNMATCHED, Dedup, Event, Kafka, PickySink, Stream, table
from tests.factories import enriched

FAST = Backoff(0.001, 0.002)


class RecordSink:
    """The system of record: stores everything at once and keeps the batches it got."""

    name = "record"

    def __init__(self) -> None:
        self.batches: list[list[EnrichedPunch]] = []

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        self.batches.append(list(batch))
        return WriteResult(len(batch), len(batch))

    def close(self) -> None:
        pass


class GatedSink:
    """Holds every write until ``gate`` is set; ``down`` makes every write a transient failure."""

    name = "gated"

    def __init__(self, down: bool = False) -> None:
        self.gate = threading.Event()
        self.down = down
        self.sizes: list[int] = []

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        if self.down:
            raise TransientSinkError("connection refused")
        self.gate.wait(10)
        self.sizes.append(len(batch))
        return WriteResult(len(batch), len(batch))

    def close(self) -> None:
        pass


class Rig:
    """A batcher over a RecordSink and a trailing sink, with a live topic."""

    def __init__(self, trailing: GatedSink | PickySink, kafka: Kafka | None = None, in_flight: int = 8) -> None:
        self.kafka = kafka or Kafka(delay_s=0.001)
        self.stream = Stream(self.kafka)
        self.lead, self.trailing = RecordSink(), trailing
        self.runners = [SinkRunner(self.lead, FAST), SinkRunner(trailing, FAST)]
        self.dedup = Dedup()
        self.stats = WorkerStats()
        employees = table(EmployeeRecord(attendance_code="1", employee_id="E-1"),
                          EmployeeRecord(attendance_code="bad", employee_id="E-2"))
        self.batcher = Batcher(
            sinks=self.runners, dedup=self.dedup, employees=employees, send=self.kafka.send,
            unmatched_topic=UNMATCHED, dlq_topic=DLQ, batch_max=100, batch_within_s=0, dedup_window_s=3600,
            stats=self.stats, live_topic=LIVE, batches_in_flight=in_flight,
        )
        self.batcher.bind(self.stream)
        self.offset = 0

    async def flush(self, punches: list[RawPunch]) -> None:
        for punch in punches:
            await self.batcher.add(Event(self.offset, punch))
            self.offset += 1
        await self.batcher.flush()

    def live(self) -> list[str]:
        return [str(decode(LivePunch, v).event_id) for t, _, v in self.kafka.sent if t == LIVE]

    def run(self, scenario: Callable[[Rig], Awaitable[None]]) -> None:
        gate = getattr(self.trailing, "gate", None)
        try:
            asyncio.run(scenario(self))
        finally:
            if gate is not None:
                gate.set()  # a held write must end for the sink's thread to stop
            for runner in self.runners:
                runner.stop()


def punches(n: int, code: str = "1") -> list[RawPunch]:
    return [enriched(k, user_code=code).punch for k in range(n)]


def test_punches_go_live_while_the_trailing_sink_still_writes_and_are_acked_once_it_holds_them() -> None:
    rig, batch = Rig(GatedSink()), punches(3)

    async def scenario(rig: Rig) -> None:
        await rig.flush(batch)
        await asyncio.sleep(0.05)
        assert rig.live() == [str(p.event_id) for p in batch]  # live: the system of record holds them
        assert rig.stream.acked == [] and rig.trailing.sizes == []  # not acked: the trailing sink does not
        rig.trailing.gate.set()
        await rig.batcher.settle()

    rig.run(scenario)
    assert rig.trailing.sizes == [3]
    assert rig.stream.acked == [0, 1, 2]
    assert rig.stats.written == {"record": 3, "gated": 3}


def test_a_row_only_the_trailing_sink_rejects_is_live_dead_lettered_and_not_remembered() -> None:
    rig = Rig(PickySink({"bad"}))
    good, bad = punches(2), enriched(9, user_code="bad").punch

    async def scenario(rig: Rig) -> None:
        await rig.flush([good[0], bad, good[1]])
        await rig.batcher.settle()

    rig.run(scenario)
    assert rig.live() == [str(good[0].event_id), str(bad.event_id), str(good[1].event_id)]  # as in Postgres
    dead = [decode(QuarantineRecord, v) for t, _, v in rig.kafka.sent if t == DLQ]
    assert [(q.device_serial, q.source_offset) for q in dead] == [(bad.device_serial, 1)]
    assert dead[0].detail.startswith("picky: ")
    # remembered: the stored ones; not the rejected one, which must pass when it comes back from quarantine
    assert set(rig.dedup) == {str(good[0].event_id), str(good[1].event_id)}
    assert rig.stream.acked == [0, 1, 2] and set(rig.stream.pending_at_ack) == {0}


def test_a_resend_arriving_while_its_original_is_in_flight_is_a_duplicate() -> None:
    rig, [punch] = Rig(GatedSink()), punches(1)

    async def scenario(rig: Rig) -> None:
        await rig.flush([punch])
        await rig.flush([punch])  # the device sends it again; the first is not in the table yet
        assert str(punch.event_id) not in rig.dedup
        rig.trailing.gate.set()
        await rig.batcher.settle()

    rig.run(scenario)
    assert [len(b) for b in rig.lead.batches] == [1] and rig.trailing.sizes == [1]
    assert rig.stats.duplicates == 1
    assert rig.dedup[str(punch.event_id)].now() == 1  # where it was first written: offset 0
    assert rig.live() == [str(punch.event_id)]
    assert rig.stream.acked == [0, 1]


def test_at_most_batches_in_flight_are_unacked_and_the_next_flush_waits_for_room() -> None:
    rig = Rig(GatedSink(), in_flight=2)
    batches = [punches(2)[k:k + 1] for k in range(2)] + [[enriched(5, user_code="1").punch]]

    async def scenario(rig: Rig) -> None:
        await rig.flush(batches[0])
        await rig.flush(batches[1])
        third = asyncio.create_task(rig.flush(batches[2]))
        await asyncio.sleep(0.05)
        assert not third.done() and len(rig.lead.batches) == 2  # held before its plan: backpressure
        rig.trailing.gate.set()
        await third
        await rig.batcher.settle()

    rig.run(scenario)
    assert len(rig.lead.batches) == 3 and rig.trailing.sizes == [1, 1, 1]
    assert rig.stream.acked == [0, 1, 2]


def test_acks_stay_in_offset_order_when_a_later_batch_is_confirmed_first() -> None:
    # Kafka refuses the first batch's live record once: it is sent again a second later, by
    # when the second batch is long confirmed and stored everywhere.
    rig, batch = Rig(PickySink(set()), kafka=Kafka(delay_s=0.001, refuse=1)), punches(4)

    async def scenario(rig: Rig) -> None:
        await rig.flush(batch[:2])
        await rig.flush(batch[2:])
        await rig.batcher.settle()

    rig.run(scenario)
    assert rig.stream.acked == [0, 1, 2, 3]
    assert sorted(rig.live()) == sorted(str(p.event_id) for p in batch)


def test_a_stop_during_a_trailing_sink_outage_leaves_the_batch_unacked_and_unremembered() -> None:
    rig, batch = Rig(GatedSink(down=True)), punches(2)

    async def scenario(rig: Rig) -> None:
        await rig.flush(batch)
        await rig.batcher.settle(timeout_s=0.1)

    rig.run(scenario)
    assert rig.live() == [str(p.event_id) for p in batch]  # the system of record holds them
    assert rig.stream.acked == []  # re-delivered at the next start, absorbed by the idempotent sinks
    assert set(rig.dedup) == set() and rig.batcher._pending == {}
