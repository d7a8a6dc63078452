"""Worker counters, kept in memory and written to a small JSON file after each batch (at most
every ``save_every_s``: at 30 batches a second the writes were 5% of the event loop).

The file lets other processes (the demo, the benchmark, `stack status`) see progress without
touching the worker's embedded ClickHouse store, which only its owner process may open.
The same hooks (``note_consumed``, ``note_retry``, ``note_batch``) move the worker's Prometheus
metrics (``WorkerMetrics``, served by infra.worker), so the batcher and sinks report in one place.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.delivery import stored

if TYPE_CHECKING:
    from streams.delivery import DeliveryOutcome
    from streams.logic import BatchPlan

OUTCOMES = ("stored", "duplicate", "unmatched", "quarantined", "rejected")
# Seconds to land one batch in one sink: a few ms when healthy, minutes while a sink is down.
SINK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class WorkerMetrics:
    """The worker's Prometheus metrics on ``registry`` (names in docs/metrics.md)."""

    def __init__(self, registry: CollectorRegistry, sinks: Sequence[str] = ()) -> None:
        self.consumed = Counter("tapstream_worker_events_consumed", "Events read from the raw topic", registry=registry)
        self.out = Counter(
            "tapstream_worker_events_out",
            "Events whose batch is done, by outcome: stored (every sink holds it), duplicate, unmatched (parked), "
            "quarantined, rejected (a sink refused it: dead-lettered)", ["outcome"], registry=registry,
        )
        self.batches = Counter("tapstream_worker_batches", "Batches flushed and acked", registry=registry)
        self.last_batch = Gauge("tapstream_worker_last_batch_timestamp_seconds", "When the last batch was acked (epoch s)",
                                registry=registry)
        self.sink_rows = Counter(
            "tapstream_worker_sink_rows", "Rows per sink, by result: written (landed), inserted (new to the sink), "
            "rejected (refused as bad data)", ["sink", "result"], registry=registry,
        )
        self.sink_seconds = Histogram(
            "tapstream_worker_sink_batch_seconds", "Time to land one batch in a sink, retries included",
            ["sink"], buckets=SINK_SECONDS_BUCKETS, registry=registry,
        )
        self.sink_failures = Counter("tapstream_worker_sink_failures", "Transient sink failures (each one retried)",
                                     ["sink"], registry=registry)
        self.lag = Gauge("tapstream_worker_consumer_lag", "Records of the topic the worker's group has not committed yet",
                         ["topic", "partition"], registry=registry)
        self.lag_failures = Counter("tapstream_worker_lag_probe_failures", "Lag probes that could not read Kafka",
                                    registry=registry)
        for outcome in OUTCOMES:  # present from the first scrape, so rate() and alerts see a 0
            self.out.labels(outcome)
        for sink in sinks:
            self.sink_failures.labels(sink)
            for result in ("written", "inserted", "rejected"):
                self.sink_rows.labels(sink, result)

    def batch(self, plan: BatchPlan, outcomes: Sequence[DeliveryOutcome], sinks: Sequence[str]) -> None:
        kept = len(stored(plan.to_write, outcomes))
        counts = {"stored": kept, "duplicate": plan.duplicates, "unmatched": len(plan.unmatched),
                  "quarantined": len(plan.quarantined), "rejected": len(plan.to_write) - kept}
        for outcome, count in counts.items():
            if count:
                self.out.labels(outcome).inc(count)
        for name, result in zip(sinks, outcomes, strict=True):
            rows = self.sink_rows
            rows.labels(name, "written").inc(result.written)
            rows.labels(name, "inserted").inc(result.inserted)
            rows.labels(name, "rejected").inc(len(result.rejected))
            if result.attempts:  # an empty batch never reaches the sink: no latency to tell
                self.sink_seconds.labels(name).observe(result.seconds)
        self.batches.inc()
        self.last_batch.set(time.time())

    def set_lag(self, topic: str, positions: Mapping[int, tuple[int, int]]) -> None:
        """Set the lag of every partition from (committed offset, end offset) pairs."""
        for partition, (committed, end) in positions.items():
            self.lag.labels(topic, str(partition)).set(max(0, end - committed))


@dataclass
class WorkerStats:
    """Cumulative counters since the worker started (wall-clock times are epoch seconds)."""

    path: Path | None = None
    metrics: WorkerMetrics | None = field(default=None, repr=False, compare=False)
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
    save_every_s: float = field(default=0.0, repr=False, compare=False)  # 0: after every batch
    _saved_at: float = field(default=float("-inf"), init=False, repr=False, compare=False)
    _held: bool = field(default=False, init=False, repr=False, compare=False)  # a save is due

    def note_consumed(self) -> None:
        now = time.time()
        self.consumed += 1
        self.first_event_at = self.first_event_at or now
        self.last_event_at = now
        if self.metrics is not None:
            self.metrics.consumed.inc()

    def note_retry(self, sink: str, attempt: int, error: str) -> None:
        self.last_sink_error[sink] = error
        if self.metrics is not None:
            self.metrics.sink_failures.labels(sink).inc()
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
        if self.metrics is not None:
            self.metrics.batch(plan, outcomes, sinks)
        if time.monotonic() - self._saved_at >= self.save_every_s:
            self.save()
        else:
            self._held = True

    def save_held(self) -> None:
        """Write the counters a throttled batch did not (call every ``save_every_s``)."""
        if self._held:
            self.save()

    def as_dict(self) -> dict[str, Any]:
        """The counters (copies), without the file path and the metrics."""
        skip = ("path", "metrics", "save_every_s", "_saved_at", "_held")
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self) if f.name not in skip}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: readers never see half a file
        self._saved_at, self._held = time.monotonic(), False


def read_stats(path: Path) -> dict[str, Any] | None:
    """The last saved counters, or None if the worker has not written any yet."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value
