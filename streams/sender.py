"""The worker's producer for what it writes besides tables: live, parked and dead-letter records.

librdkafka (confluent-kafka), as the device producers use, instead of Faust's aiokafka producer:
sending a batch's records through aiokafka cost more than writing the batch to both sinks
once batches grew to hundreds (docs/benchmarks.md, "Confirmation at the final code"); here a
``produce`` is a C call and delivery reports arrive on a thread of their own.

``send`` returns an asyncio future resolved when Kafka has the record (acks=all, idempotent),
or failed with ``DeliveryError``: the batcher waits for every future of a batch before it
acks, so a record Kafka did not take keeps its batch unacked, to be retried. The futures a
poll settles reach the event loop together, in one wake-up (one per record was 7% of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque

from confluent_kafka import KafkaException, Producer

from tapstream.errors import TapstreamError

logger = logging.getLogger(__name__)

POLL_S = 0.1
QUEUE_FULL_WAIT_S = 0.01


class DeliveryError(TapstreamError):
    """Kafka did not take a record the worker sent (it is sent again with its batch)."""


class KafkaSender:
    """An idempotent librdkafka producer whose sends are awaitable delivery futures."""

    # A flush produces its records back to back and then waits for them: linger only delays it.
    def __init__(self, bootstrap: str, *, linger_ms: int = 1, delivery_timeout_s: float = 60.0) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # implies acks=all, ordered, no duplicates from retries
            "linger.ms": linger_ms,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "log_level": 3,
        })
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="worker-sender", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settled: deque[tuple[asyncio.Future[None], str, object]] = deque()  # reports not yet on the loop

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> asyncio.Future[None]:
        """Queue one record; the returned future resolves once Kafka has it."""
        loop = self._started()
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(_retrieve)  # a caller that never awaits it (rematch) logs nothing

        def delivered(err: object, _msg: object) -> None:  # on the thread polling librdkafka
            self._settled.append((future, topic, err))

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=list(headers.items()), on_delivery=delivered)
                return future
            except BufferError:  # librdkafka's local queue is full: let the poll thread drain it
                await asyncio.sleep(QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                raise DeliveryError(f"cannot send to {topic}: {exc}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then stop the delivery thread."""
        left = self._producer.flush(timeout_s)
        with contextlib.suppress(RuntimeError):  # the loop may be closed: nobody waits any more
            self._hand_over()
        if left:
            logger.warning("%d record(s) not confirmed by Kafka at stop; their batches stay unacked", left)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(POLL_S * 10)

    def _started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._thread.start()
        return self._loop

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_S)
            self._hand_over()

    def _hand_over(self) -> None:
        settled = []
        while self._settled:
            settled.append(self._settled.popleft())
        if settled and self._loop is not None:
            self._loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[None], str, object]]) -> None:
    for future, topic, err in settled:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(DeliveryError(f"Kafka did not take a record for {topic}: {err}"))


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
