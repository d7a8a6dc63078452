"""Sink delivery: transient errors are retried until the batch lands; rejected rows are isolated."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.punch import EnrichedPunch, PunchSource, make_raw_punch
from sinks.base import WriteResult
from streams.delivery import Backoff, SinkRunner, stored
from tapstream.errors import PermanentSinkError, TransientSinkError

FAST = Backoff(initial_s=0.001, max_s=0.004)


def rows(n: int) -> list[EnrichedPunch]:
    out = []
    for i in range(n):
        p = make_raw_punch(
            device_serial="SN1", user_code=str(i), device_time=datetime(2026, 11, 23, 8, 0, i % 60),
            device_tz="UTC", punch_state=0, verify_mode=1, source=PunchSource.PUSH, raw=str(i),
            received_at=datetime(2026, 11, 23, 8, 1, tzinfo=UTC),
        )
        out.append(EnrichedPunch(punch=p, employee_id=f"E{i}", source_partition=0, source_offset=i))
    return out


class FlakySink:
    """Down for the first ``failures`` calls, then stores rows; rejects user codes in ``bad``."""

    name = "flaky"

    def __init__(self, failures: int = 0, bad: frozenset[str] = frozenset()) -> None:
        self.failures = failures
        self.bad = bad
        self.calls = 0
        self.stored: dict[object, EnrichedPunch] = {}

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientSinkError("connection refused")
        if any(r.punch.user_code in self.bad for r in batch):
            raise PermanentSinkError("data_exception", "value out of range")
        new = [r for r in batch if r.punch.event_id not in self.stored]
        self.stored.update({r.punch.event_id: r for r in batch})
        return WriteResult(len(batch), len(new))

    def close(self) -> None:
        pass


def deliver(sink: FlakySink, batch: list[EnrichedPunch]):  # type: ignore[no-untyped-def]
    retries: list[int] = []
    runner = SinkRunner(sink, FAST, on_retry=lambda name, attempt, err: retries.append(attempt))
    try:
        return asyncio.run(runner.deliver(batch)), retries
    finally:
        runner.close()


def test_an_outage_is_retried_until_the_whole_batch_lands() -> None:
    sink = FlakySink(failures=5)
    outcome, retries = deliver(sink, rows(10))
    assert outcome.written == 10 and outcome.inserted == 10
    assert outcome.attempts == 6 and retries == [1, 2, 3, 4, 5]
    assert len(sink.stored) == 10


def test_rejected_rows_are_isolated_and_every_other_row_is_written() -> None:
    sink = FlakySink(bad=frozenset({"13", "40"}))
    outcome, _ = deliver(sink, rows(64))
    assert sorted(r.punch.user_code for r, _ in outcome.rejected) == ["13", "40"]
    assert outcome.written == 62
    assert len(sink.stored) == 62
    # bisection, not row by row: far fewer calls than rows
    assert sink.calls < 30


def test_a_row_any_sink_rejected_is_not_stored() -> None:
    batch = rows(64)
    outcome, _ = deliver(FlakySink(bad=frozenset({"13"})), batch)
    clean, _ = deliver(FlakySink(), batch)
    kept = stored(batch, [clean, outcome])
    assert len(kept) == 63 and all(r.punch.user_code != "13" for r in kept)


def test_an_empty_batch_touches_nothing() -> None:
    sink = FlakySink()
    outcome, _ = deliver(sink, [])
    assert outcome.written == 0 and sink.calls == 0


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert Backoff(0.5, 4.0).delays()[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
