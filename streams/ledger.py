"""The worker's ledger: ``attendance.unmatched`` and ``attendance.dlq`` projected into Postgres.

HR reads parked punches (``unmatched_punches``) and operators read dead letters
(``quarantine``) in Postgres, and the re-matcher finds parked punches there. The topics stay
the durable record; the tables follow them:

* a plain consumer in its own thread and group (``<app id>-ledger``), so a slow or down
  Postgres never holds up the punches agent;
* offsets are committed only after the rows are in Postgres (one transaction per batch), and
  both writes are idempotent, so a crash or a rebalance repeats rows, never loses them;
* Postgres unavailable: the same batch is retried with backoff until it lands (logged every
  attempt); rows Postgres refuses as data are written one by one so the rest land, and the
  refused ones are logged with their topic position (they remain on the topic);
* an unexpected error restarts the consumer from the committed offsets after a pause.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from sinks.postgres import ConnectionSource, translate
from sinks.postgres_ledger import REASON_HEADER, ParkedMessage, write_parked
from sinks.postgres_quarantine import DlqMessage, write_quarantine
from streams.delivery import Backoff
from tapstream.errors import PermanentSinkError, TransientSinkError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)


class Ledger:
    """Runs the projection in a daemon thread between ``start()`` and ``stop()``."""

    def __init__(self, settings: Settings, pool: ConnectionSource, backoff: Backoff) -> None:
        self.topics = settings.topics
        self.pool = pool
        self.backoff = backoff
        self.batch = settings.worker.ledger_batch
        self.config = {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"{settings.worker.app_id}-ledger",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 2,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception:  # a bug, not an outage: say so loudly, start over from the committed offsets
                logger.exception("ledger failed; restarting it in %.0fs (the topics still hold everything)",
                                 self.backoff.max_s)
                self._stop.wait(self.backoff.max_s)

    def _consume(self) -> None:
        consumer = Consumer(self.config)
        try:
            consumer.subscribe([self.topics.unmatched, self.topics.dlq])
            while not self._stop.is_set():
                messages = [m for m in consumer.consume(self.batch, timeout=0.5) if _usable(m)]
                if messages and self._store(messages):
                    _commit(consumer, messages)
        finally:
            consumer.close()

    def _store(self, messages: Sequence[Message]) -> bool:
        """Write until it lands (True), or until stopped (False: nothing committed, re-read at start)."""
        parked, dead = split(messages, self.topics.unmatched)
        delay = self.backoff.initial_s
        while not self._stop.is_set():
            try:
                self._write_isolating(parked, dead)
                return True
            except TransientSinkError as exc:
                logger.warning("ledger: postgres unavailable, retrying %d rows in %.1fs: %s", len(messages), delay, exc)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff.max_s)
        return False

    def _write_isolating(self, parked: list[ParkedMessage], dead: list[DlqMessage]) -> None:
        """Write the batch; if Postgres refuses it as data, write row by row so the rest land."""
        try:
            self._write(parked, dead)
            return
        except PermanentSinkError as exc:
            logger.warning("ledger: postgres refused a batch (%s); writing its rows one by one", exc)
        singles: list[tuple[list[ParkedMessage], list[DlqMessage]]] = [([p], []) for p in parked]
        singles += [([], [d]) for d in dead]
        for one_parked, one_dead in singles:
            try:
                self._write(one_parked, one_dead)
            except PermanentSinkError as exc:
                where = (one_parked or one_dead)[0]
                logger.error("ledger: postgres refused message %d:%d (kept on the topic): %s",
                             where.partition, where.offset, exc)

    def _write(self, parked: Sequence[ParkedMessage], dead: Sequence[DlqMessage]) -> None:
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                n_parked = write_parked(cur, parked)
                n_dead = write_quarantine(cur, dead)
        except Exception as exc:
            if isinstance(exc, TransientSinkError | PermanentSinkError):
                raise
            raise translate(exc) from exc
        logger.info("ledger: %d parked punches, %d dead letters projected into postgres", n_parked, n_dead)


def split(messages: Sequence[Message], unmatched_topic: str) -> tuple[list[ParkedMessage], list[DlqMessage]]:
    """Sort consumed messages into parked punches and dead letters."""
    parked, dead = [], []
    for m in messages:
        partition, offset = m.partition() or 0, m.offset() or 0
        if m.topic() == unmatched_topic:
            parked.append(ParkedMessage(partition, offset, m.value(), _reason(m.headers())))
        else:
            dead.append(DlqMessage(partition, offset, m.key(), m.value()))
    return parked, dead


def _reason(headers: Any) -> str:
    for name, value in headers or ():
        if name == REASON_HEADER and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return "unknown_employee"


def _usable(message: Message) -> bool:
    if message.error() is None:
        return True
    logger.warning("ledger: consumer error: %s", message.error())
    return False


def _commit(consumer: Consumer, messages: Sequence[Message]) -> None:
    ends: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic() or "", m.partition() or 0)
        ends[key] = max(ends.get(key, 0), (m.offset() or 0) + 1)
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
    except KafkaException as exc:  # e.g. partitions moved in a rebalance: their rows are re-read, harmlessly
        logger.warning("ledger: offset commit failed (rows will be written again): %s", exc)
