"""Read a Kafka topic from its beginning up to its current end, and again for what came since.

For the small compacted or single-partition topics that a process wants whole: the employee
map, device statuses, open alerts. No consumer group: partitions are assigned, never
subscribed, and nothing is committed; the group id librdkafka insists on is random so that it
names no one.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tapstream.errors import TapstreamError, first_line

logger = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]  # (key, value); a None value is a tombstone


class TopicTail:
    """``read_new()`` returns every record written since the last call (all of them the first
    time), in offset order per partition; a read that stalls for ``timeout_s`` fails."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
        self._topic, self._timeout_s = topic, timeout_s
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"tapstream-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
        })
        self._next: dict[int, int] | None = None  # partition -> next offset to read

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
            self._consumer.assign([TopicPartition(self._topic, p, 0) for p in metadata.partitions])
            self._next = {p: 0 for p in metadata.partitions}
        pending = {}
        for p, start in self._next.items():
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=self._timeout_s)
            if max(start, low) < high:
                pending[p] = high
        return self._consume(pending)

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
