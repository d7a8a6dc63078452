"""Read a Kafka topic from its beginning up to its current end, and again for what came since.

For the small compacted or single-partition topics that a process wants whole: the employee
map, device statuses, open alerts. No consumer group: partitions are assigned, never
subscribed, and nothing is committed; the group id librdkafka insists on is random so that it
names no one. ``LatestByKey`` keeps the latest decoded value per key of such a topic.
"""

from __future__ import annotations

import logging
import uuid
from typing import Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel

from schemas.codec import decode_or_none
from tapstream.errors import TapstreamError, first_line

logger = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]  # (key, value); a None value is a tombstone
M = TypeVar("M", bound=BaseModel)


class TopicTail:
    """``read_new()`` returns every record written since the last call (all of them the first
    time), in offset order per partition; a read that stalls for ``timeout_s`` fails. A topic
    found shorter than what was read of it (deleted and created again) is read again from its
    start, and ``restarted`` says so: whatever the caller built from it is stale."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
        self._topic, self._timeout_s = topic, timeout_s
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"tapstream-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        self._next: dict[int, int] | None = None  # partition -> next offset to read
        self.restarted = False  # the last read_new() read the topic again from its start

    def read_new(self) -> list[Record]:
        try:
            return self._read_to_end()
        except KafkaException as exc:
            raise TapstreamError(f"cannot read {self._topic}: {first_line(exc)}") from exc

    def close(self) -> None:
        self._consumer.close()

    def _read_to_end(self) -> list[Record]:
        if self._next is None:
            metadata = self._consumer.list_topics(self._topic, timeout=self._timeout_s).topics[self._topic]
            if metadata.error is not None:
                raise TapstreamError(f"cannot read {self._topic}: {metadata.error.str()}")
            self._next = self._start_over(list(metadata.partitions))
        self.restarted = False
        marks = {p: self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=self._timeout_s)
                 for p in self._next}
        if any(high < self._next[p] for p, (_low, high) in marks.items()):
            logger.warning("%s is shorter than what was read of it (created again?): reading it from its start", self._topic)
            self._next = self._start_over(list(self._next))
            self.restarted = True
        start = self._next
        return self._consume({p: high for p, (low, high) in marks.items() if max(start[p], low) < high})

    def _start_over(self, partitions: list[int]) -> dict[int, int]:
        """Read ``partitions`` from their start; the next offset of each."""
        self._consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
        return {p: 0 for p in partitions}

    def _consume(self, ends: dict[int, int]) -> list[Record]:
        assert self._next is not None
        out: list[Record] = []
        while ends:
            msg: Message | None = self._consumer.poll(self._timeout_s)
            if msg is None:
                raise TapstreamError(f"{self._topic} stopped answering before its end ({len(out)} records read)")
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            if error is not None or partition is None or offset is None:
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("%s: %s", self._topic, error.str())
                continue
            out.append((msg.key(), msg.value()))
            self._next[partition] = offset + 1
            if partition in ends and offset + 1 >= ends[partition]:
                del ends[partition]
        return out


class LatestByKey(Generic[M]):
    """The latest value per key of a compacted topic, decoded as ``model``; None for a
    tombstone and for a value that is not the contract (logged by ``decode_or_none``). Each
    ``refresh`` reads only what was written since the last one."""

    def __init__(self, bootstrap: str, topic: str, model: type[M], timeout_s: float = 30.0) -> None:
        self._tail = TopicTail(bootstrap, topic, timeout_s)
        self._topic, self._model = topic, model
        self.latest: dict[str, M | None] = {}

    def refresh(self) -> dict[str, M | None]:
        records = self._tail.read_new()
        if self._tail.restarted:
            self.latest.clear()
        for key, value in records:
            code = (key or b"").decode("utf-8", "replace")
            self.latest[code] = decode_or_none(self._model, value, f"{self._topic}: record for {code!r}")
        return self.latest

    def close(self) -> None:
        self._tail.close()
