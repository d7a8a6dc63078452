"""Read the three feed topics for the monitor: a tailing consumer, and one-off span reads.

confluent-kafka in a thread (its calls block), partitions ``assign``-ed, never subscribed: no
consumer group is joined and nothing is committed (librdkafka insists on a group id; a random
one names no one). Where reading starts (``start_cursor``): ``devices.status`` and ``alerts``
from their beginning (the first is compacted: its history is the latest status per device; the
second is small and gives the open incidents), ``attendance.live`` ``backlog`` events before its
end, so the ring holds recent punches from the first moment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel

from monitor.feed import Decoded
from monitor.ring import ALERTS, CODES, LIVE, STATUS, Cursor
from schemas.alert import Alert
from schemas.codec import decode_or_none
from schemas.device_status import DeviceStatus
from schemas.live import LivePunch
from tapstream.errors import StackError, first_line
from tapstream.settings import TopicSettings

logger = logging.getLogger(__name__)

MODELS: dict[str, type[BaseModel]] = {LIVE: LivePunch, STATUS: DeviceStatus, ALERTS: Alert}
POLL_S = 0.2
BATCH = 500
SPAN_TIMEOUT_S = 15.0
RETRY_S = 1.0


def topic_names(topics: TopicSettings) -> dict[str, str]:
    """Topic code -> topic name."""
    return {LIVE: topics.live, STATUS: topics.device_status, ALERTS: topics.alerts}


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"tapstream-monitor-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })


def decoded(code: str, msg: Message) -> Decoded:
    """A message as the feed takes it; a tombstone or a value that is not the topic's contract is None."""
    offset = _offset(msg)
    return code, offset, decode_or_none(MODELS[code], msg.value(), f"{msg.topic()} offset {offset}")


def _offset(msg: Message) -> int:
    offset = msg.offset()
    assert offset is not None  # a consumed message, not an error event, always has one
    return offset


def start_cursor(bootstrap: str, names: dict[str, str], backlog: int, timeout_s: float = 10.0) -> Cursor:
    """Where the monitor starts reading each topic (see the module docstring)."""
    consumer = _consumer(bootstrap)
    try:
        marks = {code: consumer.get_watermark_offsets(TopicPartition(names[code], 0), timeout=timeout_s)
                 for code in CODES}
    except KafkaException as exc:
        raise StackError(f"cannot read {', '.join(names.values())} on {bootstrap} "
                         f"(is Kafka up, are the topics created? `tapstream stack up`): {first_line(exc)}") from exc
    finally:
        consumer.close()
    low, high = marks[LIVE]
    return Cursor(live=max(low, high - backlog), status=marks[STATUS][0], alerts=marks[ALERTS][0])


class Tail:
    """Tail the three topics from ``start`` in a thread, handing each batch to ``deliver``
    on the event loop (``deliver`` runs there, in topic order)."""

    def __init__(self, bootstrap: str, names: dict[str, str], start: Cursor,
                 deliver: Callable[[list[Decoded]], None], loop: asyncio.AbstractEventLoop) -> None:
        self._bootstrap, self._names, self._start = bootstrap, names, start
        self._codes = {name: code for code, name in names.items()}
        self._deliver, self._loop = deliver, loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        consumer = _consumer(self._bootstrap)
        consumer.assign([TopicPartition(self._names[c], 0, self._start.of(c)) for c in CODES])
        logger.info("monitor reading %s from %s", ", ".join(self._names.values()), self._start.id())
        try:
            while not self._stop.is_set():
                try:
                    batch = self._poll(consumer)
                except Exception:  # noqa: BLE001 — a dead reader would freeze the feed with no trace
                    logger.exception("monitor source: reading failed, retrying in %.0f s", RETRY_S)
                    self._stop.wait(RETRY_S)
                    continue
                if batch:
                    self._loop.call_soon_threadsafe(self._deliver, batch)
        finally:
            consumer.close()

    def _poll(self, consumer: Consumer) -> list[Decoded]:
        out: list[Decoded] = []
        # consume(n, timeout) waits for n messages or the timeout: at a few hundred punches a
        # second that is always the timeout, 200 ms added to every delivery. Wait for the first
        # message only, then take what has already arrived.
        first = consumer.poll(POLL_S)
        if first is None:
            return out
        for msg in [first, *consumer.consume(BATCH - 1, 0)]:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 — librdkafka's own name
                    logger.warning("monitor source: %s", error)
                continue
            out.append(decoded(self._codes[str(msg.topic())], msg))
        return out


def read_spans(bootstrap: str, names: dict[str, str], spans: dict[str, tuple[int, int]],
               timeout_s: float = SPAN_TIMEOUT_S) -> list[Decoded]:
    """Every message of each topic's [start, end) span, in offset order per topic (blocks)."""
    out: list[Decoded] = []
    consumer = _consumer(bootstrap)
    try:
        for code, (start, end) in spans.items():
            out += _span(consumer, code, names[code], start, end, timeout_s)
    finally:
        consumer.close()
    return out


def _span(consumer: Consumer, code: str, topic: str, start: int, end: int, timeout_s: float) -> list[Decoded]:
    tp = TopicPartition(topic, 0, start)
    low, _high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
    if max(start, low) >= end:
        return []  # the span is gone (retention) or empty
    consumer.assign([tp])
    out: list[Decoded] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msg in consumer.consume(BATCH, POLL_S):
            if msg.error() is not None:
                continue
            offset = _offset(msg)
            if offset >= end:
                return out
            out.append(decoded(code, msg))
            if offset >= end - 1:
                return out
        position = consumer.position([tp])[0].offset
        if position >= end:
            return out  # compaction removed the span's last offsets
    raise TimeoutError(f"{topic}: offsets {start}-{end} not read within {timeout_s:.0f}s")
