"""The pure half of `tapstream bench pipeline`: the synthetic workload and the result line.

Nothing here touches a service, so tests/unit/test_bench.py covers it whole:

* ``bench_employees`` / ``bench_devices`` / ``generate_punches``: a seeded, realistic workload —
  terminals in several time zones, each punching every 1-20 s (so its device times strictly
  increase and every event id, a digest of serial + PIN + device time + state, is distinct),
  badges drawn from the employee list, ADMS-shaped raw lines;
* ``rate`` / ``worker_rate``: the arithmetic behind the figures;
* ``result_line``: the one JSON object the command prints, with a fixed set of keys.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.punch import DEVICE_TIME_FORMAT, PunchSource, RawPunch, make_raw_punch, resolve_utc

# A spread of zones, so punch_time resolution is exercised as in a multi-site fleet.
ZONES = ("Europe/Berlin", "Asia/Dhaka", "America/New_York", "UTC", "Asia/Kolkata", "Africa/Lagos")
DEPARTMENTS = ("Sales", "Plant", "Office", "Warehouse")
DEFAULT_START = datetime(2026, 11, 2, 7, 0, 0)  # a Monday morning, device wall clock

# Keys of the JSON line, in the order they are documented (docs/benchmarks.md).
RESULT_KEYS = (
    "events", "devices", "employees", "load_events_per_s", "worker_events_per_s", "wall_s",
    "worker_s", "startup_s", "worker_cpu_s", "postgres_rows", "clickhouse_rows", "counts_match", "batches",
    "breakdown", "settings", "machine", "versions", "profile", "run_id",
)


@dataclass(frozen=True)
class Device:
    serial: str
    timezone: str


def bench_employees(count: int) -> list[EmployeeRecord]:
    """``count`` active employees with attendance codes 100000, 100001, ..."""
    return [
        EmployeeRecord(
            attendance_code=str(100_000 + i), employee_id=f"E-{100_000 + i}",
            name=f"Employee {i}", department=DEPARTMENTS[i % len(DEPARTMENTS)],
        )
        for i in range(count)
    ]


def bench_devices(count: int) -> list[Device]:
    """``count`` terminals BENCH-0001, ... spread over ZONES."""
    return [Device(f"BENCH-{i + 1:04d}", ZONES[i % len(ZONES)]) for i in range(count)]


def generate_punches(
    events: int, devices: list[Device], codes: list[str], *, seed: int = 7, start: datetime = DEFAULT_START,
) -> Iterator[RawPunch]:
    """Yield ``events`` valid punches, round-robin over ``devices``, deterministic for a seed.

    Each device's clock advances 1-20 s per punch, so no two punches share (device, time) and
    every event id is distinct. ``received_at`` follows punch_time by a few seconds.
    """
    if not devices or not codes:
        raise ValueError("need at least one device and one employee code")
    rng = random.Random(seed)
    clocks = [start] * len(devices)
    for n in range(events):
        slot = n % len(devices)
        device = devices[slot]
        clocks[slot] = clock = clocks[slot] + timedelta(seconds=rng.randint(1, 20))
        code = codes[rng.randrange(len(codes))]
        state, verify = (0 if clock.hour < 12 else 1), rng.choice((1, 15, 4))
        raw = f"{code}\t{clock.strftime(DEVICE_TIME_FORMAT)}\t{state}\t{verify}\t\t0\t0"
        yield make_raw_punch(
            device_serial=device.serial, user_code=code, device_time=clock, device_tz=device.timezone,
            punch_state=state, verify_mode=verify, source=PunchSource.PUSH, raw=raw,
            received_at=resolve_utc(clock, device.timezone) + timedelta(seconds=rng.randint(1, 30)),
        )


def encoded_messages(punches: Iterator[RawPunch]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs as producers write them: key = device serial, value = JSON."""
    return [(p.device_serial.encode(), encode(p)) for p in punches]


def rate(count: int, seconds: float | None) -> float | None:
    """Events per second, rounded to a whole number; None when the span is unknown or empty."""
    if seconds is None or seconds <= 0:
        return None
    return round(count / seconds)


def worker_span(stats: Mapping[str, Any]) -> float | None:
    """Seconds from the worker's first consumed event to its last flush (both in both sinks)."""
    first, last = stats.get("first_event_at"), stats.get("last_flush_at")
    if first is None or last is None:
        return None
    return float(last) - float(first)


def worker_rate(stats: Mapping[str, Any], events: int) -> float | None:
    """Events per second carried into every sink, from the worker's own clock."""
    return rate(events, worker_span(stats))


# The worker's one line per batch (streams.batcher) and per sink write (sinks/*.py).
_FLUSH_LINE = re.compile(r"batch of \d+: .* in (\d+) ms")
_WRITE_LINE = re.compile(r"(postgres|clickhouse): wrote batch rows=\d+ .*ms=([\d.]+)")


def time_breakdown(worker_log: str) -> dict[str, float]:
    """Seconds the worker spent flushing batches (plan, sinks, acks) and in each sink's writes.

    Read from the worker's log lines; the sinks write concurrently, so their sum may exceed
    flush_s. What is not flush_s of the worker's span went to fetching and buffering events.
    """
    out = {"flush_s": 0.0, "postgres_write_s": 0.0, "clickhouse_write_s": 0.0}
    for line in worker_log.splitlines():
        if match := _FLUSH_LINE.search(line):
            out["flush_s"] += int(match.group(1)) / 1000
        elif match := _WRITE_LINE.search(line):
            out[f"{match.group(1)}_write_s"] += float(match.group(2)) / 1000
    return {key: round(value, 2) for key, value in out.items()}


def result_line(**fields: Any) -> dict[str, Any]:
    """The result as one dict with exactly RESULT_KEYS (missing ones None, unknown ones refused)."""
    unknown = set(fields) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"not result fields: {sorted(unknown)}")
    return {key: fields.get(key) for key in RESULT_KEYS}
