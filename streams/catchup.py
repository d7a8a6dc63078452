"""Know when a consumer has caught up with a topic as it stood at start.

The punches agent must not enrich anything before the employee map is loaded, or a fresh
worker would park every punch of an employee whose mapping simply had not been read yet.
``CatchUp`` takes the topic's end offsets and the consumer group's committed offsets once at
start; it is ready when every partition's consumed position reaches its end offset.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import Consumer, TopicPartition


def start_positions(bootstrap: str, group_id: str, topic: str, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """Per partition: (committed offset of the group or 0, end offset) — blocking, call at start."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(tps, timeout=timeout_s)
        out = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            start = tp.offset if tp.offset >= 0 else low
            out[tp.partition] = (start, high)
        return out
    finally:
        consumer.close()


class CatchUp:
    """Readiness of one topic's consumption against the end offsets seen at start."""

    def __init__(self, positions: dict[int, tuple[int, int]]) -> None:
        self._behind = {p: high for p, (start, high) in positions.items() if start < high}
        self._ready = asyncio.Event()
        if not self._behind:
            self._ready.set()

    def consumed(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` was applied."""
        target = self._behind.get(partition)
        if target is not None and offset + 1 >= target:
            del self._behind[partition]
            if not self._behind:
                self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait(self) -> None:
        await self._ready.wait()
