"""Group commit into the pull spool: many device threads hand records over, one thread writes.

A thousand devices each fsyncing their own punches would spend the disk on fsyncs; here every
``emit`` is queued and one thread appends everything waiting in a single transaction (records
and marks together, marks in arrival order so the latest wins), then wakes the publisher.
A device's ``on_durable`` callback runs once its records are on disk.

When the disk refuses, the batch is kept in memory and retried with backoff: nothing is
dropped, marks do not move, and devices keep reading (their logs hold every punch anyway).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from producers.publisher import PublisherLike
from producers.spool import Spool, SpoolRecord
from tapstream.errors import SpoolError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    records: Sequence[SpoolRecord]
    marks: Mapping[str, str] | None
    on_durable: Callable[[], None] | None


class SpoolWriter:
    """Queue + writer thread in front of a Spool; ``max_batch`` records per transaction at most."""

    def __init__(self, spool: Spool, publisher: PublisherLike | None = None, *, max_batch: int = 20_000,
                 retry_max_s: float = 10.0) -> None:
        self.spool = spool
        self._publisher = publisher
        self._max_batch = max_batch
        self._retry_max_s = retry_max_s
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failures = 0

    def emit(self, records: Sequence[SpoolRecord], marks: Mapping[str, str] | None = None,
             on_durable: Callable[[], None] | None = None) -> None:
        """Queue records (and marks) for the next transaction; returns at once."""
        if records or marks:
            self._queue.put(_Item(records, marks, on_durable))

    def mark(self, key: str) -> str | None:
        """The durable value of a mark (what survived the last crash, plus what was written since)."""
        return self.spool.mark(key)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pull-spool-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Write everything queued so far, then end the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            items, last = self._take()
            if items:
                self._write(items)
            if last:
                return

    def _take(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        items, size = [first], len(first.records)
        while size < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
            size += len(item.records)
        return items, False

    def _write(self, items: list[_Item]) -> None:
        records = [record for item in items for record in item.records]
        marks: dict[str, str] = {}
        for item in items:
            marks.update(item.marks or {})
        delay = 0.1
        while True:
            try:
                self.spool.append(records, marks)
                break
            except SpoolError as exc:
                self.failures += 1
                logger.error("cannot spool %d pull records (retrying in %.1f s): %s", len(records), delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        self.written += len(records)
        if self._publisher is not None:
            self._publisher.wake()
        for item in items:
            if item.on_durable is not None:
                try:
                    item.on_durable()
                except Exception:  # a device's callback must not end the one writer thread
                    logger.exception("on_durable callback failed (records are spooled regardless)")
