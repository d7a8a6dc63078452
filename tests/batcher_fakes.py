"""Fakes for the worker's batcher (streams.batcher): Faust events and stream, its dedup table,
sinks and a Kafka whose sends resolve later."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import decode, encode
from schemas.employee import EmployeeRecord
from schemas.live import LivePunch
from schemas.punch import EnrichedPunch, RawPunch
from sinks.base import WriteResult
from streams.batcher import Batcher
from streams.delivery import SinkRunner
from streams.sender import DeliveryError
from tapstream.errors import PermanentSinkError

LIVE, UNMATCHED, DLQ = "live", "unmatched", "dlq"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # aiokafka's shape


class Event:
    """What the batcher reads of a Faust event (weak-referenceable, as Faust's are)."""

    def __init__(self, offset: int, punch: RawPunch) -> None:
        self.message = Message("raw", 0, offset, punch.device_serial.encode(), encode(punch))


class Window:
    def __init__(self, mark: int) -> None:
        self.mark = mark

    def now(self) -> int:
        return self.mark

    def delta(self, _seconds: float) -> int:
        return self.mark


class Dedup(dict[str, int]):
    """A windowed table's surface: reading gives a window view, writing stores the mark."""

    def __getitem__(self, key: str) -> Window:  # type: ignore[override]  # the windowed view Faust returns
        return Window(self.get(key, 0))


class PickySink:
    """Stores every row except the user codes in ``bad`` (rejected as bad data)."""

    name = "picky"

    def __init__(self, bad: set[str]) -> None:
        self.bad = bad

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        if any(r.punch.user_code in self.bad for r in batch):
            raise PermanentSinkError("data_exception", "value out of range")
        return WriteResult(len(batch), len(batch))

    def close(self) -> None:
        pass


class Kafka:
    """Sends land in ``sent`` only when their delivery future resolves (``delay_s`` later); the
    first ``refuse`` sends fail (Kafka did not take them)."""

    def __init__(self, delay_s: float = 0.01, refuse: int = 0, raise_first: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.pending = 0
        self.delay_s, self.refuse, self.raise_first = delay_s, refuse, raise_first

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> Any:
        if self.raise_first > 0:  # refused at once, as librdkafka does with a full or closed producer
            self.raise_first -= 1
            raise DeliveryError(f"cannot send to {topic}: local queue full")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.pending += 1

        def deliver() -> None:
            self.pending -= 1
            if self.refuse > 0:
                self.refuse -= 1
                future.set_exception(RuntimeError("not leader for partition"))
                return
            self.sent.append((topic, key, value))
            future.set_result(None)

        loop.call_later(self.delay_s, deliver)
        return future


class Stream:
    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka
        self.acked: list[int] = []
        self.pending_at_ack: list[int] = []
        self.acked_at: list[float] = []
        self.live_at_ack: list[set[uuid.UUID]] = []  # the event ids Kafka had on the live topic

    async def ack(self, event: Event) -> None:
        self.acked.append(event.message.offset)
        self.pending_at_ack.append(self.kafka.pending)
        self.acked_at.append(time.monotonic())
        self.live_at_ack.append({decode(LivePunch, v).event_id for t, _, v in self.kafka.sent if t == LIVE})


def flush_batches(batcher: Batcher, runner: SinkRunner, batches: list[list[RawPunch]],
                  after_first: Callable[[], None] = lambda: None) -> None:
    """Add and flush each batch in turn (``after_first`` looks in after the first flush), then
    wait for the last confirmation; stops the runner."""
    async def go() -> None:
        offset = 0
        for n, batch in enumerate(batches):
            for punch in batch:
                await batcher.add(Event(offset, punch))
                offset += 1
            await batcher.flush()
            if n == 0:
                after_first()
        await batcher.settle()

    try:
        asyncio.run(go())
    finally:
        runner.stop()


def table(*records: EmployeeRecord) -> dict[str, Any]:
    return {r.attendance_code: r.model_dump(mode="json") for r in records}
