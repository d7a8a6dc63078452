"""The pure half of `tapstream bench pipeline`: the synthetic workload and the result line.

Nothing here touches a service, so tests/unit/test_bench.py covers it whole:

* ``bench_employees`` / ``bench_devices`` / ``generate_punches``: a seeded, realistic workload —
  terminals in several time zones, each punching every 1-20 s (so its device times strictly
  increase and every event id, a digest of serial + PIN + device time + state, is distinct),
  badges drawn from the employee list, ADMS-shaped raw lines;
* ``bench_workload``: the same punches with a ``Mix`` of what a fleet also sends — re-sends
  of earlier punches, badges nobody is mapped to, clocks reset to 2000 — and the exact counts
  the worker must then report (``Expected``);
* ``rate`` / ``worker_rate``: the arithmetic behind the figures;
* ``result_line``: the one JSON object the command prints, with a fixed set of keys.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.punch import DEVICE_TIME_FORMAT, PunchSource, RawPunch, make_raw_punch, resolve_utc

# A spread of zones, so punch_time resolution is exercised as in a multi-site fleet.
ZONES = ("Europe/Berlin", "Asia/Dhaka", "America/New_York", "UTC", "Asia/Kolkata", "Africa/Lagos")
DEPARTMENTS = ("Sales", "Plant", "Office", "Warehouse")
DEFAULT_START = datetime(2026, 11, 2, 7, 0, 0)  # a Monday morning, device wall clock
# Where a reset terminal's clock restarts: before validation.earliest_punch (2010), so the
# stream quarantines its punches as implausible_time (streams.logic.implausible).
RESET_CLOCK = datetime(2000, 1, 1, 0, 0, 0)
UNKNOWN_BADGES = 50  # distinct codes nobody is mapped to, shared by the parked punches
# Re-sends repeat one of the last this-many new punches: a terminal re-sending a recent push
# batch. Some land in the original's worker batch, most in a later one (the dedup table).
RESEND_LOOKBACK = 5000

Message = tuple[bytes, bytes]  # (key, value) as written to attendance.raw

# Keys of the JSON line, in the order they are documented (docs/benchmarks.md).
RESULT_KEYS = (
    "events", "devices", "employees", "mix", "load_events_per_s", "worker_events_per_s", "wall_s",
    "worker_s", "startup_s", "worker_cpu_s", "postgres_rows", "clickhouse_rows", "expected", "worker_counts",
    "counts_match", "postgres_unmatched_rows", "postgres_quarantine_rows", "batches",
    "breakdown", "settings", "machine", "versions", "profile", "run_id",
)


@dataclass(frozen=True)
class Device:
    serial: str
    timezone: str


@dataclass(frozen=True)
class Mix:
    """Fractions of the N messages that are not new punches of known badges (each 0-1)."""

    duplicates: float = 0.03  # re-sends of an earlier punch: half the same bytes, half a new received_at
    unmatched: float = 0.01  # punches of badges not in the employee list: parked
    quarantined: float = 0.002  # punches from a clock reset to 2000: quarantined implausible_time

    def counts(self, events: int) -> tuple[int, int, int]:
        """(duplicates, unmatched, quarantined) among ``events`` messages, rounded to whole ones."""
        counts = (round(events * self.duplicates), round(events * self.unmatched), round(events * self.quarantined))
        if min(self.duplicates, self.unmatched, self.quarantined) < 0 or sum(counts) >= max(events, 1):
            raise ValueError(f"a mix of {self} leaves no new punch among {events} messages")
        return counts


NO_MIX = Mix(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Expected:
    """What the worker must count for a workload: its stats, and the rows in both sinks."""

    records: int  # distinct event ids of valid punches of known badges: rows in each sink
    duplicates: int
    unmatched: int
    quarantined: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    """The messages for attendance.raw, in order, and what the worker must make of them."""

    messages: list[Message]
    expected: Expected


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


def unknown_badges(codes: list[str]) -> list[str]:
    """UNKNOWN_BADGES codes 900000000, ... that are not in ``codes`` (their punches are parked)."""
    known = set(codes)
    badges = [str(900_000_000 + i) for i in range(UNKNOWN_BADGES)]
    if known.intersection(badges):
        raise ValueError("the employee list holds one of the bench's unknown badges 900000000...")
    return badges


class _Fleet:
    """The terminals' clocks: each new punch goes to the next device, its clock 1-20 s later."""

    def __init__(self, devices: list[Device], codes: list[str], rng: random.Random, start: datetime) -> None:
        if not devices or not codes:
            raise ValueError("need at least one device and one employee code")
        self.devices, self.rng, self.start = devices, rng, start
        self.clocks = [start] * len(devices)
        self.made = 0

    def punch(self, codes: list[str], *, reset: bool = False) -> RawPunch:
        """The next punch, by a badge of ``codes``; ``reset``: the device's clock reads 2000."""
        slot, rng = self.made % len(self.devices), self.rng
        self.made += 1
        device = self.devices[slot]
        self.clocks[slot] = clock = self.clocks[slot] + timedelta(seconds=rng.randint(1, 20))
        code = codes[rng.randrange(len(codes))]
        # The draws above and below stay in this order: generate_punches' output for a seed is
        # what every recorded figure was measured on.
        shown = RESET_CLOCK + (clock - self.start) if reset else clock
        state, verify = (0 if shown.hour < 12 else 1), rng.choice((1, 15, 4))
        raw = f"{code}\t{shown.strftime(DEVICE_TIME_FORMAT)}\t{state}\t{verify}\t\t0\t0"
        return make_raw_punch(
            device_serial=device.serial, user_code=code, device_time=shown, device_tz=device.timezone,
            punch_state=state, verify_mode=verify, source=PunchSource.PUSH, raw=raw,
            received_at=resolve_utc(clock, device.timezone) + timedelta(seconds=rng.randint(1, 30)),
        )


def generate_punches(
    events: int, devices: list[Device], codes: list[str], *, seed: int = 7, start: datetime = DEFAULT_START,
) -> Iterator[RawPunch]:
    """Yield ``events`` valid punches, round-robin over ``devices``, deterministic for a seed.

    Each device's clock advances 1-20 s per punch, so no two punches share (device, time) and
    every event id is distinct. ``received_at`` follows punch_time by a few seconds.
    """
    fleet = _Fleet(devices, codes, random.Random(seed), start)
    for _ in range(events):
        yield fleet.punch(codes)


def encoded_messages(punches: Iterator[RawPunch]) -> list[Message]:
    """(key, value) pairs as producers write them: key = device serial, value = JSON."""
    return [(p.device_serial.encode(), encode(p)) for p in punches]


def bench_workload(
    events: int, devices: list[Device], codes: list[str], *, mix: Mix = Mix(), seed: int = 7,
    start: datetime = DEFAULT_START,
) -> Workload:
    """``events`` messages for attendance.raw in the proportions of ``mix``, and what they must give.

    Deterministic for a seed; with NO_MIX the messages are exactly ``generate_punches``'. The
    first message is always a new punch, so every re-send has an earlier punch to repeat.
    Re-sends repeat only punches that are recorded: the worker remembers recorded ids alone, so
    a re-sent parked punch would be parked again or dropped depending on its batch.
    """
    mix_rng = random.Random(f"mix-{seed}")  # apart from the punches' draws: NO_MIX changes nothing
    fleet = _Fleet(devices, codes, random.Random(seed), start)
    unknown = unknown_badges(codes)
    messages: list[Message] = []
    recorded: list[tuple[Message, RawPunch]] = []
    resent = 0
    for kind in _kinds(events, mix, mix_rng):
        if kind == "duplicate":
            messages.append(_resend(recorded, same_bytes=resent % 2 == 0, rng=mix_rng))
            resent += 1
            continue
        punch = fleet.punch(unknown if kind == "unmatched" else codes, reset=kind == "quarantined")
        message = (punch.device_serial.encode(), encode(punch))
        messages.append(message)
        if kind == "new":
            recorded.append((message, punch))
    duplicates, unmatched, quarantined = mix.counts(events)
    return Workload(messages, Expected(len(recorded), duplicates, unmatched, quarantined))


def _kinds(events: int, mix: Mix, rng: random.Random) -> list[str]:
    """What each message is, in stream order: a new punch first, the rest shuffled."""
    duplicates, unmatched, quarantined = mix.counts(events)
    rest = ["duplicate"] * duplicates + ["unmatched"] * unmatched + ["quarantined"] * quarantined
    rest += ["new"] * (events - 1 - len(rest))
    rng.shuffle(rest)
    return (["new"] + rest)[:events]


def _resend(recorded: list[tuple[Message, RawPunch]], *, same_bytes: bool, rng: random.Random) -> Message:
    """A recent recorded punch again: as it was, or as a producer that re-read it sends it."""
    (key, value), punch = recorded[rng.randrange(max(0, len(recorded) - RESEND_LOOKBACK), len(recorded))]
    if same_bytes:
        return key, value
    # A re-read punch gets a new received_at; its event id (serial, code, device time, state) stays.
    later = punch.received_at + timedelta(seconds=rng.randint(60, 3600))
    return key, encode(punch.model_copy(update={"received_at": later}))


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


# The worker's stats counters the bench reports (streams.stats.WorkerStats).
WORKER_COUNTS = ("consumed", "duplicates", "unmatched", "quarantined", "rejected")


def worker_counts(stats: Mapping[str, Any]) -> dict[str, int | None]:
    """The worker's own counts, from its stats file (None: not there, e.g. it never started)."""
    return {key: stats.get(key) for key in WORKER_COUNTS}


def counts_match(
    events: int, expected: Expected, counted: Mapping[str, int | None], postgres_rows: int, clickhouse_rows: int,
) -> bool:
    """Both sinks hold exactly the expected records, and the worker consumed all ``events`` and
    counted exactly the expected duplicates, parked and quarantined punches."""
    return (
        postgres_rows == clickhouse_rows == expected.records
        and counted.get("consumed") == events
        and counted.get("duplicates") == expected.duplicates
        and counted.get("unmatched") == expected.unmatched
        and counted.get("quarantined") == expected.quarantined
    )


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
