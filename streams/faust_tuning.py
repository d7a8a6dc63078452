"""Two Faust 0.15 defaults the live path cannot live with, adjusted in one place.

Both are class-level in Faust (no setting reaches them), so they apply to the whole process;
a process runs one worker app, so that is the scope we want.

* **The fetch wait.** Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``,
  hard-coded. aiokafka leaves a partition whose fetched records are not yet consumed out of
  its next fetch request, so that request can name only partitions that have nothing new at
  that instant; the broker then holds it up to the full wait while records pile up on the
  others. At 500 punches/s the worker sat idle for 1.1-1.4 s every couple of seconds, then
  flushed the pile in one large batch: the p99 of tap -> SSE was 2.3-2.8 s. With 50 ms it
  was 0.7 s (docs/benchmarks.md, "The fetch wait").
* **The producer buffer.** It holds table changelog records; past ``max_messages`` (100) the
  conductor stops reading the raw topic until it drains, one record at a time. With a dedup
  mark per stored punch, every batch over 100 froze the stream for up to a second. A batch's
  marks may wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

CreateConsumer = Callable[[Any, Any], Any]
_FAUST_CREATE: CreateConsumer = AIOKafkaConsumerThread._create_worker_consumer


def with_fetch_wait(create: CreateConsumer, fetch_max_wait_ms: int) -> CreateConsumer:
    """``create`` (Faust's consumer factory), its consumer's fetch wait set to ours."""

    def create_consumer(thread: Any, transport: Any) -> Any:
        consumer = create(thread, transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher; Faust has not started it yet.
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    return create_consumer


def tune_faust(*, fetch_max_wait_ms: int, batch_max: int) -> None:
    """Apply both adjustments (idempotent: each call starts from Faust's own factory)."""
    AIOKafkaConsumerThread._create_worker_consumer = with_fetch_wait(_FAUST_CREATE, fetch_max_wait_ms)  # type: ignore[method-assign,assignment]
    ProducerBuffer.max_messages = max(ProducerBuffer.max_messages, 2 * batch_max)
