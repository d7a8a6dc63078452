"""Write a batch to a sink until it lands: retry transient errors, isolate rejected rows.

The worker must never move past a batch that is not stored (an exception escaping a Faust
agent acks the messages: silent loss), so:

* ``TransientSinkError`` — wait with exponential backoff and retry the same rows, forever,
  reporting every attempt; the consumer does not advance meanwhile;
* ``PermanentSinkError`` — the batch is bisected until the offending rows stand alone; they
  are returned as rejected (the caller dead-letters them), every other row is written.

Sinks are synchronous drivers (psycopg, chDB); each runs in its own single thread so a slow or
hanging sink never blocks the event loop that keeps the Kafka consumer alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from schemas.punch import EnrichedPunch
from sinks.base import Sink, WriteResult
from tapstream.errors import PermanentSinkError, TransientSinkError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: initial_s doubling up to max_s (seconds)."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delays(self) -> list[float]:
        """The first few delays, for tests and docs."""
        out, delay = [], self.initial_s
        for _ in range(8):
            out.append(delay)
            delay = min(delay * 2, self.max_s)
        return out


@dataclass
class DeliveryOutcome:
    """What happened to one batch at one sink."""

    written: int = 0
    inserted: int = 0
    attempts: int = 0
    seconds: float = 0.0  # from the first attempt until the rows landed (or were isolated)
    rejected: list[tuple[EnrichedPunch, PermanentSinkError]] = field(default_factory=list)


def stored(rows: Sequence[EnrichedPunch], outcomes: Sequence[DeliveryOutcome]) -> list[EnrichedPunch]:
    """The rows every sink took: a row any sink rejected is not stored (it is dead-lettered)."""
    rejected = {row.punch.event_id for outcome in outcomes for row, _ in outcome.rejected}
    return [row for row in rows if row.punch.event_id not in rejected]


def share_out(outcome: DeliveryOutcome, parts: Sequence[Sequence[EnrichedPunch]]) -> list[DeliveryOutcome]:
    """One write's outcome, shared out among the batches whose rows it wrote together: each gets
    its own rejected rows and the rest as written; the attempts and time go to the first only,
    so that counters summed over the batches count the write once."""
    rejected = {row.punch.event_id: (row, error) for row, error in outcome.rejected}
    inserted_left = outcome.inserted
    shares = []
    for n, rows in enumerate(parts):
        mine = [rejected[row.punch.event_id] for row in rows if row.punch.event_id in rejected]
        written = len(rows) - len(mine)
        inserted = min(written, inserted_left)
        inserted_left -= inserted
        first = n == 0
        shares.append(DeliveryOutcome(written, inserted, outcome.attempts if first else 0,
                                      outcome.seconds if first else 0.0, mine))
    return shares


class SinkRunner:
    """One sink plus the single thread its blocking driver runs in."""

    def __init__(self, sink: Sink, backoff: Backoff, on_retry: Callable[[str, int, str], None] | None = None) -> None:
        self.sink = sink
        self.backoff = backoff
        self.on_retry = on_retry
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{sink.name}")

    async def deliver(self, rows: Sequence[EnrichedPunch]) -> DeliveryOutcome:
        """Land ``rows``, retrying transient failures until the sink takes them (or the task is cancelled)."""
        outcome = DeliveryOutcome()
        if not rows:
            return outcome
        started = time.monotonic()
        try:
            result = await self._retry(rows, outcome)
        except PermanentSinkError as exc:
            logger.warning("%s rejected a batch of %d (%s): bisecting to isolate the bad rows", self.sink.name, len(rows), exc)
            await self._isolate(rows, outcome)
        else:
            outcome.written, outcome.inserted = result.offered, result.inserted
        outcome.seconds = time.monotonic() - started
        return outcome

    async def _retry(self, rows: Sequence[EnrichedPunch], outcome: DeliveryOutcome) -> WriteResult:
        delay = self.backoff.initial_s
        loop = asyncio.get_running_loop()
        while True:
            outcome.attempts += 1
            try:
                return await loop.run_in_executor(self._thread, self.sink.write_batch, rows)
            except TransientSinkError as exc:
                logger.warning(
                    "%s unavailable (attempt %d, retry in %.1fs, batch of %d held): %s",
                    self.sink.name, outcome.attempts, delay, len(rows), exc,
                )
                if self.on_retry:
                    self.on_retry(self.sink.name, outcome.attempts, str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff.max_s)

    async def _isolate(self, rows: Sequence[EnrichedPunch], outcome: DeliveryOutcome) -> None:
        """Bisect a rejected batch: halves that land are kept, single rows still rejected are not."""
        if len(rows) == 1:
            try:
                result = await self._retry(rows, outcome)
            except PermanentSinkError as exc:
                outcome.rejected.append((rows[0], exc))
                return
            outcome.written += result.offered
            outcome.inserted += result.inserted
            return
        middle = len(rows) // 2
        for half in (rows[:middle], rows[middle:]):
            try:
                result = await self._retry(half, outcome)
            except PermanentSinkError:
                await self._isolate(half, outcome)
                continue
            outcome.written += result.offered
            outcome.inserted += result.inserted

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the sink's thread and return its result (blocks: call it off the event loop).

        For work that must not overlap the sink's writes, e.g. a report on the sink's store.
        """
        return self._thread.submit(fn).result()

    def stop(self) -> None:
        """Release the sink's thread; the sink itself stays open."""
        self._thread.shutdown(wait=True)

    def close(self) -> None:
        self.stop()
        self.sink.close()
