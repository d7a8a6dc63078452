"""A generated attendance scenario and what Tapstream must make of it, derived from its intent.

The generator plans shifts first (who works when, on which device, with what check-ins and
check-outs) and only then turns them into punches, then disturbs their delivery: duplicates,
device clock resets, late punches, badges unknown until HR maps them. The expectation is read
from the plan itself — intervals are known by construction — never from Tapstream's own rules
(sinks/timesheets.py), so the test can catch a wrong rule, not only a wrong pipeline.

Conventions the plan follows (and the pipeline is configured for): work days start at
``DAY_START`` local time, night shifts end before it; states 0/1 check-in/out, 2/3 break
out/in, 255 (a device without states) alternating in/out.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from schemas.punch import PunchSource, RawPunch, make_raw_punch

DAY_START = time(7, 0)
DAYS = [date(2026, 6, 1) + timedelta(days=n) for n in range(4)]
DEVICES = {"SCN-DAY": "Europe/Berlin", "SCN-NIGHT": "Asia/Dhaka", "SCN-NOSTATE": "America/New_York"}
DAY_CODES = [f"50{n:02d}" for n in range(1, 8)]  # 5001..5007 on SCN-DAY
NOSTATE_CODES = ["5008"]  # on the device without punch states
NIGHT_CODES = ["5009", "5010", "5011", "5012"]  # on SCN-NIGHT, 22:00 -> ~06:00 next morning
LATE_MAPPED = ["5006", "5011", "5012"]  # unknown to HR until the end of the run


@dataclass(frozen=True)
class ExpectedDay:
    """One timesheets row as the plan says it must be."""

    timezone: str
    first_in: datetime | None
    last_out: datetime | None
    worked_seconds: int
    punches: int
    pairs: int
    flags: tuple[str, ...]


@dataclass
class Scenario:
    employees: dict[str, str]  # code -> employee id (all, eventually)
    before_outage: list[RawPunch] = field(default_factory=list)
    during_outage: list[RawPunch] = field(default_factory=list)
    after_outage: list[RawPunch] = field(default_factory=list)  # incl. late punches and duplicates
    clock_resets: list[RawPunch] = field(default_factory=list)
    records: dict[uuid.UUID, str] = field(default_factory=dict)  # event id -> employee id
    timesheets: dict[tuple[str, date], ExpectedDay] = field(default_factory=dict)

    @property
    def known_at_start(self) -> dict[str, str]:
        return {c: e for c, e in self.employees.items() if c not in LATE_MAPPED}


def generate(seed: int = 7) -> Scenario:
    """The scenario for ``seed``: same seed, same punches."""
    rng = random.Random(seed)
    codes = DAY_CODES + NOSTATE_CODES + NIGHT_CODES
    scenario = Scenario(employees={c: f"E-{c}" for c in codes})
    planned: list[tuple[int, RawPunch]] = []  # (delivery phase 0/1/2, punch)
    for day_index, day in enumerate(DAYS):
        for code in codes:
            shift = _plan_shift(rng, code, day)
            if shift is None:
                continue
            serial, local_times = shift
            states = _states(serial, len(local_times))
            punches = [_punch(serial, code, t, s) for t, s in zip(local_times, states, strict=True)]
            _expect(scenario, code, day, serial, punches)
            phase = (0, 0, 1, 2)[day_index]  # days 1-2 before the outage, day 3 during, day 4 after
            planned += [(phase, p) for p in punches]
    _deliver(rng, scenario, planned)
    return scenario


def _plan_shift(rng: random.Random, code: str, day: date) -> tuple[str, list[datetime]] | None:
    """Device and local punch times of one employee's work day (None: day off)."""
    if code in NIGHT_CODES:
        if day == DAYS[-1]:
            return None  # the last night would end after the scenario
        start = datetime.combine(day, time(21, 30)) + timedelta(minutes=rng.randint(0, 45))
        end = datetime.combine(day + timedelta(days=1), time(5, 15)) + timedelta(minutes=rng.randint(0, 80))
        return "SCN-NIGHT", [start, end]
    serial = "SCN-NOSTATE" if code in NOSTATE_CODES else "SCN-DAY"
    start = datetime.combine(day, time(7, 40)) + timedelta(minutes=rng.randint(0, 50))
    end = datetime.combine(day, time(16, 30)) + timedelta(minutes=rng.randint(0, 60))
    lunch_out = datetime.combine(day, time(12, 0)) + timedelta(minutes=rng.randint(0, 20))
    lunch_in = lunch_out + timedelta(minutes=30 + rng.randint(0, 20))
    if code == "5002" and day == DAYS[1]:
        return serial, [start]  # forgot everything but the check-in: a single punch
    if code == "5003" and day == DAYS[2]:
        return serial, [start, lunch_out, lunch_in]  # forgot to check out
    if rng.random() < 0.5:
        return serial, [start, lunch_out, lunch_in, end]
    return serial, [start, end]


def _states(serial: str, count: int) -> list[int]:
    if serial == "SCN-NOSTATE":
        return [255] * count
    if count <= 2:
        return [0, 1][:count]
    return [0, 2, 3, 1][:count]  # in, break-out, break-in, out


def _punch(serial: str, code: str, local: datetime, state: int, received: datetime | None = None) -> RawPunch:
    return make_raw_punch(
        device_serial=serial, user_code=code, device_time=local, device_tz=DEVICES[serial],
        punch_state=state, verify_mode=1, source=PunchSource.PUSH,
        raw=f"{code}\t{local:%Y-%m-%d %H:%M:%S}\t{state}\t1", received_at=received or datetime.now(UTC),
    )


def _expect(scenario: Scenario, code: str, day: date, serial: str, punches: list[RawPunch]) -> None:
    """The plan's own reading of a day: punches alternate in, out, in, out... by construction."""
    employee = scenario.employees[code]
    for p in punches:
        scenario.records[p.event_id] = employee
    ins, outs = punches[0::2], punches[1::2]
    worked = sum(int((o.punch_time - i.punch_time).total_seconds()) for i, o in zip(ins, outs, strict=False))
    flags = ("single_punch",) if len(punches) == 1 else ("missing_check_out",) if len(punches) % 2 else ()
    scenario.timesheets[(employee, day)] = ExpectedDay(
        timezone=DEVICES[serial],
        first_in=punches[0].punch_time,
        last_out=outs[-1].punch_time if outs else None,
        worked_seconds=worked, punches=len(punches), pairs=len(outs), flags=flags,
    )


def _deliver(rng: random.Random, scenario: Scenario, planned: list[tuple[int, RawPunch]]) -> None:
    """Spread the punches over the three phases, then disturb the delivery."""
    phases: list[list[RawPunch]] = [[], [], []]
    for phase, punch in planned:
        held_back = phase < 2 and rng.random() < 0.08  # a late punch: delivered at the very end
        phases[2 if held_back else phase].append(punch)
    everything = [p for _, p in planned]
    # Duplicates: identical re-sends, and re-reads of the device log (same event, new receipt time).
    again = rng.sample(everything, 25)
    phases[2] += again[:15]
    phases[2] += [p.model_copy(update={"received_at": datetime.now(UTC)}) for p in again[15:]]
    phases[1] += again[:5]  # some repeats arrive during the outage too
    # A device clock reset to 2000: these can never be recorded.
    scenario.clock_resets = [_punch("SCN-DAY", "5001", datetime(2000, 1, 1, 0, 5 + n), 0) for n in range(3)]
    phases[0] += scenario.clock_resets[:2]
    phases[2] += scenario.clock_resets[2:]
    for phase in phases:
        rng.shuffle(phase)  # devices upload in any order
    scenario.before_outage, scenario.during_outage, scenario.after_outage = phases


def local_day_of(punch: RawPunch) -> date:
    """The work day a punch belongs to under the scenario's conventions (for the unit test)."""
    local = punch.punch_time.astimezone(ZoneInfo(punch.device_tz)).replace(tzinfo=None)
    return (local - timedelta(hours=DAY_START.hour, minutes=DAY_START.minute)).date()
