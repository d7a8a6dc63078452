"""Test data shared by unit and integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from schemas.punch import EnrichedPunch, PunchSource, make_raw_punch
from sinks.base import Sink
from streams.delivery import Backoff, DeliveryOutcome, SinkRunner

RECEIVED = datetime(2026, 3, 1, 2, 5, 7, 123456, tzinfo=UTC)


def enriched(
    n: int = 0,
    *,
    user_code: str = "1001",
    employee_id: str = "E-1",
    serial: str | None = None,
    device_time: datetime | None = None,
    device_tz: str = "Asia/Dhaka",
    source: PunchSource = PunchSource.PUSH,
    raw: str | None = None,
    work_code: str = "",
    received_at: datetime = RECEIVED,
    partition: int = 0,
    offset: int | None = None,
) -> EnrichedPunch:
    """The n-th punch of a series: one minute apart from 2026-03-01 08:00, alternating in/out."""
    when = device_time or datetime(2026, 3, 1, 8, 0, 0) + timedelta(minutes=n)
    record = make_raw_punch(
        device_serial=serial or f"CQZ{n % 3:010d}",
        user_code=user_code,
        device_time=when,
        device_tz=device_tz,
        punch_state=n % 2,
        verify_mode=15,
        source=source,
        raw=f"{user_code}\t{when}" if raw is None else raw,
        received_at=received_at,
        work_code=work_code,
    )
    return EnrichedPunch(punch=record, employee_id=employee_id, source_partition=partition, source_offset=n if offset is None else offset)


def deliver(sink: Sink, rows: Sequence[EnrichedPunch]) -> DeliveryOutcome:
    """Write through the worker's delivery path (retries, bisection of rejected batches)."""
    runner = SinkRunner(sink, Backoff(initial_s=0.01, max_s=0.05))
    try:
        return asyncio.run(runner.deliver(rows))
    finally:
        runner.stop()  # the sink belongs to the test's fixture
