"""Worker counters, kept in memory and written to a small JSON file after every batch.

The file lets other processes (the demo, the benchmark, `stack status`) see progress without
touching the worker's embedded ClickHouse store, which only its owner process may open.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.delivery import DeliveryOutcome
    from streams.logic import BatchPlan


@dataclass
class WorkerStats:
    """Cumulative counters since the worker started (wall-clock times are epoch seconds)."""

    path: Path | None = None
    pid: int = field(default_factory=os.getpid)  # whose counters these are: a file may be stale
    consumed: int = 0
    flushed: int = 0  # consumed events whose batch is done (stored, parked or dropped) and acked
    batches: int = 0
    duplicates: int = 0
    unmatched: int = 0
    quarantined: int = 0
    rejected: int = 0
    written: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    sink_attempts: dict[str, int] = field(default_factory=dict)
    last_sink_error: dict[str, str] = field(default_factory=dict)
    first_event_at: float | None = None
    last_event_at: float | None = None
    last_flush_at: float | None = None

    def note_consumed(self) -> None:
        now = time.time()
        self.consumed += 1
        self.first_event_at = self.first_event_at or now
        self.last_event_at = now

    def note_retry(self, sink: str, attempt: int, error: str) -> None:
        self.last_sink_error[sink] = error
        self.save()

    def note_batch(self, plan: BatchPlan, outcomes: Sequence[DeliveryOutcome], sinks: Sequence[str]) -> None:
        self.batches += 1
        self.flushed += plan.accounted
        self.duplicates += plan.duplicates
        self.unmatched += len(plan.unmatched)
        self.quarantined += len(plan.quarantined)
        for name, outcome in zip(sinks, outcomes, strict=True):
            self.written[name] = self.written.get(name, 0) + outcome.written
            self.inserted[name] = self.inserted.get(name, 0) + outcome.inserted
            self.sink_attempts[name] = self.sink_attempts.get(name, 0) + outcome.attempts
            self.rejected += len(outcome.rejected)
            self.last_sink_error.pop(name, None)
        self.last_flush_at = time.time()
        self.save()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: readers never see half a file


def read_stats(path: Path) -> dict[str, Any] | None:
    """The last saved counters, or None if the worker has not written any yet."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data
