"""A sink that trails the system of record: the batches flushed meanwhile, written together.

The batcher waits only for the first sink (Postgres) before a batch's punches go live; the
others (ClickHouse, for analytics) need only hold a batch before it is acked. So a trailing
sink writes at most once every ``every_s``: everything queued since its last write goes in one
write. The embedded ClickHouse spent about as much CPU per insert whatever its size (a part
per insert, and the merges after), and wrote 30-40 inserts a second of 10-30 rows at 500
punches/s: over a third of a core the worker shared with everything else (docs/benchmarks.md).
An idle worker's first batch is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from schemas.punch import EnrichedPunch
from streams.delivery import DeliveryOutcome, SinkRunner, share_out

logger = logging.getLogger(__name__)


class TrailingSink:
    """Queues batches for ``runner`` and writes them together, at most once every ``every_s``."""

    def __init__(self, runner: SinkRunner, every_s: float) -> None:
        self.runner = runner
        self.every_s = every_s
        self._queue: list[tuple[Sequence[EnrichedPunch], asyncio.Future[DeliveryOutcome]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._last_write = float("-inf")

    def deliver(self, rows: Sequence[EnrichedPunch]) -> asyncio.Future[DeliveryOutcome]:
        """A future for the outcome of ``rows`` (cancel it to abandon them, as a stop does)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeliveryOutcome] = loop.create_future()
        if not rows:
            future.set_result(DeliveryOutcome())
            return future
        self._queue.append((rows, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_queued())
        return future

    async def stop(self) -> None:
        """Abandon the write under way (its batches stay unacked) and anything queued."""
        for _, future in self._queue:
            future.cancel()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await asyncio.sleep(max(0.0, self._last_write + self.every_s - loop.time()))
            taken = [(rows, f) for rows, f in self._queue if not f.done()]  # a stop cancels futures
            self._queue = []
            if not taken:
                continue
            self._last_write = loop.time()
            try:
                outcome = await self._land([row for rows, _ in taken for row in rows])
            except asyncio.CancelledError:
                for _, future in taken:
                    future.cancel()
                raise
            for (_, future), share in zip(taken, share_out(outcome, [rows for rows, _ in taken]), strict=True):
                if not future.done():
                    future.set_result(share)

    async def _land(self, rows: list[EnrichedPunch]) -> DeliveryOutcome:
        """``runner.deliver``, tried again after an unexpected error (a bug, not an outage: the
        runner retries those itself) as a failed flush is, rather than leave the batches unacked."""
        delay = self.runner.backoff.initial_s
        while True:
            try:
                return await self.runner.deliver(rows)
            except Exception:
                logger.exception("writing %d rows to %s failed; retrying in %.1fs", len(rows), self.runner.sink.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.runner.backoff.max_s)
