"""The worker's batcher: exactly the stored punches go live, at once after the first sink
(the system of record) holds them; a batch is acked, in order, once every sink and Kafka do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from schemas.codec import decode
from schemas.employee import EmployeeRecord
from schemas.live import LivePunch
from schemas.punch import EnrichedPunch, RawPunch
from sinks.base import WriteResult
from streams.batcher import Batcher
from streams.delivery import Backoff, SinkRunner
from streams.stats import WorkerStats
from tests.batcher_fakes import DLQ, LIVE, UNMATCHED, Dedup, Event, Kafka, PickySink, Stream, flush_batches, table
from tests.factories import enriched


def run_batch(punches: list[RawPunch], employees: dict[str, Any], bad: set[str], live: str | None = LIVE) -> tuple[Kafka, Stream]:
    kafka = Kafka()
    stream = Stream(kafka)
    runner = SinkRunner(PickySink(bad), Backoff(0.001, 0.002))
    batcher = Batcher(
        sinks=[runner], dedup=Dedup(), employees=employees, send=kafka.send, unmatched_topic=UNMATCHED,
        dlq_topic=DLQ, batch_max=1000, batch_within_s=60, dedup_window_s=3600, stats=WorkerStats(),
        live_topic=live,
    )
    batcher.bind(stream)
    flush_batches(batcher, runner, [punches])
    return kafka, stream





def test_a_flushed_batch_sends_exactly_its_stored_rows_to_the_live_topic_before_the_ack() -> None:
    employees = table(EmployeeRecord(attendance_code="1", employee_id="E-1", name="Ada"),
                      EmployeeRecord(attendance_code="2", employee_id="E-2", name="Bob"),
                      EmployeeRecord(attendance_code="3", employee_id="E-3"))
    stored = [enriched(n, user_code=code).punch for n, code in enumerate(["1", "2", "1", "3"])]
    rejected = enriched(10, user_code="bad").punch  # the sink refuses it: dead-lettered, not live
    employees["bad"] = EmployeeRecord(attendance_code="bad", employee_id="E-bad").model_dump(mode="json")
    unknown = enriched(11, user_code="nobody").punch  # parked: not recorded, not live
    batch = [stored[0], stored[1], rejected, stored[2], unknown, stored[3], stored[0]]  # last: a duplicate

    kafka, stream = run_batch(batch, employees, bad={"bad"})

    live = [(key, decode(LivePunch, value)) for topic, key, value in kafka.sent if topic == LIVE]
    assert [event.event_id for _, event in live] == [p.event_id for p in stored]
    assert [key for key, _ in live] == [p.device_serial.encode() for p in stored]
    assert [event.employee_name for _, event in live] == ["Ada", "Bob", "Ada", ""]
    assert [event.employee_id for _, event in live] == ["E-1", "E-2", "E-1", "E-3"]
    assert all(event.recorded_at >= event.received_at for _, event in live)
    assert sorted(topic for topic, _, _ in kafka.sent if topic != LIVE) == [DLQ, UNMATCHED]
    # every message acked, and only once every delivery (live, parked, dead letter) was confirmed
    assert stream.acked == list(range(len(batch)))
    assert set(stream.pending_at_ack) == {0}


def test_without_a_live_topic_nothing_is_published_for_stored_rows() -> None:
    employees = table(EmployeeRecord(attendance_code="1", employee_id="E-1", name="Ada"))
    kafka, stream = run_batch([enriched(0, user_code="1").punch], employees, bad=set(), live=None)
    assert kafka.sent == []
    assert stream.acked == [0]


class SlowSink:
    """Takes 50 ms per batch and records each batch's size and start time."""

    name = "slow"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.started: list[float] = []

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        self.started.append(time.monotonic())
        time.sleep(0.05)
        self.sizes.append(len(batch))
        return WriteResult(len(batch), len(batch))

    def close(self) -> None:
        pass


def slow_batcher(batch_max: int, batch_within_s: float, kafka: Kafka | None = None
                 ) -> tuple[Batcher, SinkRunner, SlowSink, Stream]:
    """A batcher over one SlowSink, with a live topic; the caller stops the runner."""
    kafka, sink = kafka or Kafka(), SlowSink()
    stream = Stream(kafka)
    runner = SinkRunner(sink, Backoff(0.001, 0.002))
    batcher = Batcher(
        sinks=[runner], dedup=Dedup(), employees=table(EmployeeRecord(attendance_code="1", employee_id="E-1")),
        send=kafka.send, unmatched_topic=UNMATCHED, dlq_topic=DLQ, batch_max=batch_max,
        batch_within_s=batch_within_s, dedup_window_s=3600, stats=WorkerStats(), live_topic=LIVE,
    )
    batcher.bind(stream)
    return batcher, runner, sink, stream


def test_an_idle_worker_flushes_at_once_and_a_busy_one_batches_what_arrived_meanwhile() -> None:
    punches = [enriched(n, user_code="1").punch for n in range(10)]
    batcher, runner, sink, stream = slow_batcher(batch_max=1000, batch_within_s=0.001)

    async def go() -> float:
        task = asyncio.create_task(batcher.run())
        started = time.monotonic()
        await batcher.add(Event(0, punches[0]))
        await asyncio.sleep(0.02)  # the first flush is under way (its sink write takes 50 ms)
        for offset in range(1, 10):
            await batcher.add(Event(offset, punches[offset]))
        while len(stream.acked) < 10:
            await asyncio.sleep(0.005)
        task.cancel()
        return time.monotonic() - started

    try:
        elapsed = asyncio.run(go())
    finally:
        runner.stop()
    assert sink.sizes == [1, 9]  # no timer: the first went alone, the rest joined the next flush
    assert stream.acked == list(range(10)) and set(stream.pending_at_ack) == {0}
    assert elapsed < 0.5


def test_a_full_buffer_holds_the_agent_until_the_flusher_takes_it() -> None:
    punches = [enriched(n, user_code="1").punch for n in range(7)]
    batcher, runner, sink, stream = slow_batcher(batch_max=3, batch_within_s=0)

    async def go() -> None:
        task = asyncio.create_task(batcher.run())
        for offset, punch in enumerate(punches):
            await batcher.add(Event(offset, punch))
            assert len(batcher._buffer) < 3  # never more than batch_max waiting
        while len(stream.acked) < 7:
            await asyncio.sleep(0.005)
        task.cancel()

    try:
        asyncio.run(go())
    finally:
        runner.stop()
    assert sum(sink.sizes) == 7 and max(sink.sizes) <= 3
    assert stream.acked == list(range(7))


def test_the_next_batch_is_written_while_kafka_confirms_the_last_and_acks_stay_in_order() -> None:
    punches = [enriched(n, user_code="1").punch for n in range(6)]
    batcher, runner, sink, stream = slow_batcher(batch_max=10, batch_within_s=0, kafka=Kafka(delay_s=0.08))

    def nothing_acked_yet() -> None:  # the first batch is stored and sent; Kafka confirms 80 ms later
        assert stream.acked == []

    flush_batches(batcher, runner, [punches[:3], punches[3:]], after_first=nothing_acked_yet)
    assert sink.sizes == [3, 3]
    assert sink.started[1] < stream.acked_at[0]  # the second batch was written before the first was acked
    assert stream.acked == list(range(6))
    # each punch acked only once Kafka had its live record (the next batch's may still be on the way)
    assert all(p.event_id in live for p, live in zip(punches, stream.live_at_ack, strict=True))
    assert len(stream.kafka.sent) == 6  # one live record per punch


def test_a_send_kafka_refused_is_sent_again_and_the_batch_acked_only_then() -> None:
    punches = [enriched(n, user_code="1").punch for n in range(3)]
    kafka = Kafka(delay_s=0.001, refuse=2)
    batcher, runner, _sink, stream = slow_batcher(batch_max=10, batch_within_s=0, kafka=kafka)
    flush_batches(batcher, runner, [punches])
    assert sorted(decode(LivePunch, v).event_id for _, _, v in kafka.sent) == sorted(p.event_id for p in punches)
    assert stream.acked == [0, 1, 2] and set(stream.pending_at_ack) == {0}


def test_a_send_refused_at_once_is_sent_again_without_writing_the_batch_twice() -> None:
    punches = [enriched(n, user_code="1").punch for n in range(3)]
    kafka = Kafka(delay_s=0.001, raise_first=1)
    batcher, runner, sink, stream = slow_batcher(batch_max=10, batch_within_s=0, kafka=kafka)
    flush_batches(batcher, runner, [punches])
    assert sink.sizes == [3]  # the sinks wrote the batch once
    assert sorted(decode(LivePunch, v).event_id for _, _, v in kafka.sent) == sorted(p.event_id for p in punches)
    assert stream.acked == [0, 1, 2] and set(stream.pending_at_ack) == {0}
