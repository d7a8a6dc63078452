"""A trailing sink writes the batches queued since its last write together, at most once every
``every_s``, and gives each batch its own share of the outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from schemas.punch import EnrichedPunch
from sinks.base import WriteResult
from streams.delivery import Backoff, DeliveryOutcome, SinkRunner, share_out
from streams.trailing import TrailingSink
from tapstream.errors import PermanentSinkError, TransientSinkError
from tests.factories import enriched

FAST = Backoff(0.001, 0.002)


class TimedSink:
    """Takes ``write_s`` per write; records each write's size and start. ``fail`` is raised by the
    first write (or every write, with ``always``)."""

    name = "timed"

    def __init__(self, write_s: float = 0.0, fail: Exception | None = None, always: bool = False) -> None:
        self.write_s, self.fail, self.always = write_s, fail, always
        self.writes: list[tuple[int, float]] = []

    def write_batch(self, batch: Sequence[EnrichedPunch]) -> WriteResult:
        if self.fail is not None:
            fail = self.fail
            if not self.always:
                self.fail = None
            raise fail
        self.writes.append((len(batch), time.monotonic()))
        time.sleep(self.write_s)
        return WriteResult(len(batch), len(batch))

    def close(self) -> None:
        pass


def rows(first: int, n: int) -> list[EnrichedPunch]:
    return [enriched(k) for k in range(first, first + n)]


def test_share_out_gives_each_batch_its_rejected_rows_and_counts_the_write_once() -> None:
    a, b, c = rows(0, 3)
    error = PermanentSinkError("data_exception", "out of range")
    outcome = DeliveryOutcome(written=2, inserted=1, attempts=3, seconds=0.5, rejected=[(b, error)])
    first, second = share_out(outcome, [[a, b], [c]])
    assert (first.written, first.inserted, first.attempts, first.seconds, first.rejected) == (1, 1, 3, 0.5, [(b, error)])
    assert (second.written, second.inserted, second.attempts, second.seconds, second.rejected) == (1, 0, 0, 0.0, [])


class HandoverRunner(SinkRunner):
    """Records the loop time of each hand-over: the moment the trailing sink's spacing governs.
    The sink thread's own clock adds its start-up jitter (a 0.198 s gap was seen under load)."""

    def __init__(self, sink: TimedSink) -> None:
        super().__init__(sink, FAST)
        self.handovers: list[float] = []

    async def deliver(self, rows: Sequence[EnrichedPunch]) -> DeliveryOutcome:
        self.handovers.append(asyncio.get_running_loop().time())
        return await super().deliver(rows)


def run(sink: TimedSink, every_s: float, scenario: Callable[[TrailingSink], Awaitable[None]]) -> list[float]:
    """Run ``scenario``; the hand-over times, relative to its start (loop clock)."""
    runner = HandoverRunner(sink)
    trailing = TrailingSink(runner, every_s)
    started: list[float] = []

    async def main() -> None:
        started.append(asyncio.get_running_loop().time())
        await scenario(trailing)

    try:
        asyncio.run(main())
    finally:
        runner.stop()
    return [t - started[0] for t in runner.handovers]


def test_batches_queued_during_a_write_go_together_in_the_next_one_no_sooner_than_every_s() -> None:
    sink = TimedSink(write_s=0.05)
    outcomes: list[DeliveryOutcome] = []

    async def scenario(trailing: TrailingSink) -> None:
        first = trailing.deliver(rows(0, 2))  # idle: written at once
        await asyncio.sleep(0.01)
        later = [trailing.deliver(rows(10, 3)), trailing.deliver(rows(20, 1))]
        outcomes.extend(await asyncio.gather(first, *later))

    handovers = run(sink, 0.2, scenario)
    assert [size for size, _ in sink.writes] == [2, 4]
    assert handovers[0] < 0.05
    assert handovers[1] - handovers[0] >= 0.2
    assert [o.written for o in outcomes] == [2, 3, 1]
    assert [o.attempts for o in outcomes] == [1, 1, 0]  # the second write counted once


def test_an_empty_batch_is_done_at_once_without_a_write() -> None:
    sink = TimedSink()

    async def scenario(trailing: TrailingSink) -> None:
        outcome = await trailing.deliver([])
        assert outcome.written == 0 and outcome.attempts == 0

    run(sink, 1.0, scenario)
    assert sink.writes == []


def test_an_unexpected_error_is_retried_rather_than_leaving_the_batch_unfinished(caplog: pytest.LogCaptureFixture) -> None:
    sink = TimedSink(fail=RuntimeError("driver bug"))

    async def scenario(trailing: TrailingSink) -> None:
        outcome = await asyncio.wait_for(trailing.deliver(rows(0, 2)), 5)
        assert outcome.written == 2

    run(sink, 0.0, scenario)
    assert [size for size, _ in sink.writes] == [2]
    assert "writing 2 rows to timed failed; retrying" in caplog.text


def test_stop_abandons_a_write_to_a_sink_that_is_down() -> None:
    sink = TimedSink(fail=TransientSinkError("connection refused"), always=True)

    async def scenario(trailing: TrailingSink) -> None:
        outcome = trailing.deliver(rows(0, 2))
        await asyncio.sleep(0.05)  # retrying, as the sink is down
        await asyncio.wait_for(trailing.stop(), 5)
        assert outcome.cancelled()

    run(sink, 0.0, scenario)
    assert sink.writes == []
