"""Drain the push spool into Kafka, in order, deleting rows only once Kafka has them.

The loop works in *rounds*: take the oldest rows of the spool, produce them all, wait until
every delivery report is in, then ack the longest prefix Kafka confirmed. A failed delivery
ends the round; after a back-off the next round starts again from the oldest unconfirmed row.
Rows after the failure that did reach Kafka are therefore sent twice — harmless, events carry
deterministic ids and the sinks are idempotent — but a key's events never overtake each other.

Why rounds rather than a continuous stream of produce calls: librdkafka may time out message
N (broker down) and still deliver N+1 if the broker comes back in between; re-sending N after
that would put it behind N+1. Within one round all messages are queued within milliseconds of
each other, so that window is practically closed, and the round boundary closes it for the rest.

The producer is idempotent (acks=all, ordered within a session), batches briefly (linger.ms) and
gives up on a message after ``message_timeout_ms`` so an outage shows up as a failed round.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import Producer
from prometheus_client.core import Metric

from producers.spool import Spool, SpoolRow
from tapstream.errors import SpoolError
from tapstream.metrics import family
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

_PENDING = object()


class ProducerLike(Protocol):
    """The part of confluent_kafka.Producer the publisher uses (a test passes a fake)."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        *,
        on_delivery: Callable[[Any, Any], None] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


class PublisherLike(Protocol):
    """What the HTTP endpoint needs from a publisher."""

    def wake(self) -> None: ...

    def stats(self) -> dict[str, object]: ...


ProducerFactory = Callable[[dict[str, Any]], ProducerLike]


def publishing_metrics(producer: str, spool: Spool, publisher: PublisherLike) -> list[Metric]:
    """Spool depth and age, records published and failed rounds of one producer, read now
    (for ``tapstream.metrics.collect_with``; the depth is kept in memory, the age is one indexed row)."""
    stats, key = publisher.stats(), (producer,)
    age = spool.oldest_age_s()
    return [
        family("gauge", "tapstream_spool_depth", "Records in the spool waiting for Kafka", {key: spool.depth()}, ["producer"]),
        family("gauge", "tapstream_spool_oldest_age_seconds", "Age of the oldest record waiting in the spool (0: empty)",
               {key: age or 0.0}, ["producer"]),
        family("counter", "tapstream_published_records", "Spool records Kafka confirmed (punches, dead letters, statuses)",
               {key: _number(stats.get("published"))}, ["producer"]),
        family("counter", "tapstream_publish_failures", "Publish rounds Kafka failed (their records stay spooled and are retried)",
               {key: _number(stats.get("failed_rounds"))}, ["producer"]),
    ]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def producer_config(settings: Settings, *, message_timeout_ms: int = 30_000, client_id: str = "tapstream-push") -> dict[str, Any]:
    """The librdkafka configuration of a producer's publisher (stack-notes §4)."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        # A round produces every waiting row back to back, so they batch without waiting; a
        # longer linger only delays each punch (it was 10 ms: ~10 ms of every tap -> SSE).
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": message_timeout_ms,
        # Notice a restarted broker within seconds rather than librdkafka's 10 s default.
        "reconnect.backoff.max.ms": 2_000,
        # librdkafka logs every failed reconnect at ERROR; broker errors reach us through
        # error_cb instead and are reported once per failed round.
        "log_level": 2,
        "logger": logging.getLogger("librdkafka"),
    }


def _describe(error: Any) -> str:
    """KafkaError's own message (its repr is noisy); str() for anything else."""
    text = getattr(error, "str", None)
    return str(text()) if callable(text) else str(error)


def _confluent_producer(config: dict[str, Any]) -> ProducerLike:
    producer: ProducerLike = Producer(config)
    return producer


class _Round:
    """Delivery reports of one round, by position in the round."""

    def __init__(self, rows: Sequence[SpoolRow]) -> None:
        self.rows = rows
        self.results: list[object] = [_PENDING] * len(rows)
        self.pending = 0  # produced and not yet reported

    def report(self, index: int, err: Any, _msg: Any) -> None:
        self.results[index] = err
        self.pending -= 1

    def confirmed_prefix(self) -> int:
        count = 0
        for result in self.results:
            if result is not None:  # an error, or never reported / never produced
                break
            count += 1
        return count

    def first_error(self) -> object:
        return next((r for r in self.results if r is not None and r is not _PENDING), None)


class Publisher:
    """Background thread that moves spool rows into Kafka; ``wake()`` after each append.

    ``batch`` rows per round (default settings.push.publish_batch); back-off doubles from
    ``backoff_initial_s`` to ``backoff_max_s`` while Kafka fails; ``idle_tick_s`` is the
    fallback poll when nobody wakes the thread; ``shutdown_grace_s`` bounds the wait for delivery reports once stop() is called.
    """

    def __init__(
        self,
        spool: Spool,
        settings: Settings,
        *,
        producer_factory: ProducerFactory = _confluent_producer,
        message_timeout_ms: int = 30_000,
        batch: int | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        idle_tick_s: float = 1.0,
        shutdown_grace_s: float = 10.0,
        name: str = "push",
    ) -> None:
        self._spool = spool
        self._name = name
        self._config = producer_config(settings, message_timeout_ms=message_timeout_ms, client_id=f"tapstream-{name}")
        self._factory = producer_factory
        self._producer: ProducerLike | None = None
        self._batch = batch or settings.push.publish_batch
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._idle_tick_s = idle_tick_s
        self._grace_s = shutdown_grace_s
        self._stop_deadline = float("inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0  # rows confirmed by Kafka and removed from the spool
        self.failed_rounds = 0
        self.last_error: str | None = None
        self.last_published_at: float | None = None
        self._broker_error: str | None = None  # latest client-level error (connection refused...)

    def start(self) -> None:
        """Create the producer and start draining in a daemon thread."""
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-publisher", daemon=True)
        self._thread.start()

    def _new_producer(self) -> ProducerLike:
        return self._factory({**self._config, "error_cb": self._on_client_error})

    def _on_client_error(self, error: Any) -> None:
        # Called from poll() in the publisher thread; reported with the next failed round.
        self._broker_error = _describe(error)

    def wake(self) -> None:
        """Tell the thread new rows are in the spool (thread-safe, cheap)."""
        self._wake.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish the current round, flush the producer and join the thread."""
        self._stop_deadline = time.monotonic() + self._grace_s  # one budget for the whole shutdown
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("publisher did not stop within %.0f s", timeout_s)

    def stats(self) -> dict[str, object]:
        """Counters for /healthz and `tapstream demo`."""
        return {
            "published": self.published,
            "failed_rounds": self.failed_rounds,
            "last_error": self.last_error,
            "last_published_at": self.last_published_at,
            "spool_depth": self._spool.depth(),
        }

    def drain_once(self) -> int:
        """Run one round; return the rows Kafka confirmed. Raises nothing on Kafka failure:
        a failed round is counted in ``failed_rounds`` and its rows stay in the spool."""
        if self._producer is None:
            self._producer = self._new_producer()
        rows = self._spool.peek(self._batch)
        if not rows:
            return 0
        current = _Round(rows)
        self._produce_all(self._producer, current)
        self._await_reports(self._producer, current)
        confirmed = current.confirmed_prefix()
        if confirmed:
            self._spool.ack(rows[confirmed - 1].id)
            self.published += confirmed
            self.last_published_at = time.time()
        if confirmed < len(rows):
            self._failed(current, confirmed)
        else:
            logger.debug("published %d rows, last id %d", confirmed, rows[-1].id)
        return confirmed

    def _produce_all(self, producer: ProducerLike, current: _Round) -> None:
        for index, row in enumerate(current.rows):
            callback = functools.partial(current.report, index)
            while True:
                try:
                    producer.produce(row.topic, value=row.value, key=row.key, on_delivery=callback)
                    break
                except BufferError:
                    producer.poll(0.05)  # librdkafka's queue is full: let it drain
                except Exception as exc:  # KafkaException: e.g. message larger than allowed
                    # Stop here: producing later rows would let them overtake this one.
                    current.results[index] = exc
                    return
            current.pending += 1
            producer.poll(0)

    def _await_reports(self, producer: ProducerLike, current: _Round) -> None:
        while current.pending > 0:
            producer.poll(0.1)
            if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                return  # shutting down: unreported rows stay in the spool

    def _failed(self, current: _Round, confirmed: int) -> None:
        error = current.first_error()
        if error is None:  # shutdown cut the wait short: nothing failed, the rest stays spooled
            logger.info("stopping with %d rows of the round unconfirmed; they stay in the spool",
                        len(current.rows) - confirmed)
            return
        cause, self._broker_error = self._broker_error, None
        self.failed_rounds += 1
        self.last_error = f"{_describe(error)} ({cause})" if cause else _describe(error)
        logger.warning(
            "Kafka delivery failed after %d of %d rows (first unconfirmed id %d, %d rows spooled): %s",
            confirmed, len(current.rows), current.rows[confirmed].id, self._spool.depth(), self.last_error,
        )
        if getattr(error, "fatal", lambda: False)():
            # A fatal error (e.g. the idempotent producer lost its state) ends this producer.
            logger.warning("producer hit a fatal error; creating a new one")
            self._producer = self._new_producer()

    def _run(self) -> None:
        backoff = self._backoff[0]
        while not self._stop.is_set():
            self._wake.clear()  # before peeking: an append after this point wakes us again
            failures_before = self.failed_rounds
            try:
                confirmed = self.drain_once()
            except SpoolError:
                logger.exception("cannot read or ack the spool")
                confirmed, self.failed_rounds = 0, self.failed_rounds + 1
            except Exception:  # the thread must outlive any bug: rows stay in the spool
                logger.exception("publisher round crashed")
                confirmed, self.failed_rounds = 0, self.failed_rounds + 1
            if self.failed_rounds > failures_before:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff[1])
                continue
            backoff = self._backoff[0]
            if confirmed == 0 or self._spool.depth() == 0:
                self._wake.wait(self._idle_tick_s)
        self._last_rounds()
        self._shutdown()

    def _last_rounds(self) -> None:
        """Publish what was spooled just before the stop (a pull device's final "stopped" status),
        within the shutdown budget, rather than leave it for the next start."""
        while self._spool.depth() and time.monotonic() < self._stop_deadline:
            failures_before = self.failed_rounds
            try:
                confirmed = self.drain_once()
            except Exception:  # the rows stay in the spool: the next start sends them
                logger.exception("last publisher round crashed")
                return
            if confirmed == 0 or self.failed_rounds > failures_before:
                return

    def _shutdown(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(max(0.0, self._stop_deadline - time.monotonic()))
            if left:
                logger.warning("%d messages unconfirmed at shutdown; they stay in the spool", left)
        logger.info("publisher stopped: %d published, %d waiting in the spool", self.published, self._spool.depth())
