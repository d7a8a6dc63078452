"""Daily timesheets from punches: which work day a punch belongs to, and how a day's punches pair.

Pure functions (no database): the PostgreSQL sink feeds them an employee's punches of the work
days a batch touched and stores what they return, so a late punch recomputes its whole day.

Rules, in the HR system's terms:

* **Work day.** A punch belongs to the calendar day of its local time (the device's zone)
  minus ``day_start``: with a 04:00 boundary a 02:30 check-out lands on the previous day, so an
  overnight shift is one work day.
* **Direction.** States 0 (check-in), 3 (break-in) and 4 (overtime-in) open an interval;
  1 (check-out), 2 (break-out) and 5 (overtime-out) close one. Devices without a usable state
  (255, or any other code) follow the ``undefined`` policy: ``alternate`` reads a day's punches
  as in, out, in, out…; ``first_last`` keeps the first as the check-in and the last as the
  check-out and ignores the ones between.
* **Pairing.** Punches are taken in time order. An in while an interval is open is a repeated
  in (kept as the start; flagged ``repeated_in``); an out with nothing open is flagged
  ``out_without_in`` and ignored; worked time is the sum of closed intervals.
* **Flags.** ``single_punch``, ``missing_check_out`` (the day ends with an open interval),
  ``repeated_in``, ``out_without_in``. A day with any flag needs an HR look; worked time counts
  only what pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal

IN_STATES = frozenset({0, 3, 4})
OUT_STATES = frozenset({1, 2, 5})
UndefinedPolicy = Literal["alternate", "first_last"]


@dataclass(frozen=True)
class DayPunch:
    """One punch as a timesheet sees it: UTC instant, local wall time, raw state."""

    at: datetime  # UTC
    local: datetime  # naive wall clock in the timesheet's zone
    state: int


@dataclass(frozen=True)
class Timesheet:
    """One employee's work day."""

    work_day: date
    first_in: datetime | None  # UTC
    last_out: datetime | None  # UTC
    worked_s: int
    punches: int
    pairs: int
    flags: tuple[str, ...]


def work_day(local: datetime, day_start: time) -> date:
    """The work day of a local wall-clock time, days starting at ``day_start``."""
    shift = timedelta(hours=day_start.hour, minutes=day_start.minute, seconds=day_start.second)
    return (local - shift).date()


def directions(punches: Sequence[DayPunch], undefined: UndefinedPolicy) -> list[str | None]:
    """"in", "out" or None (ignored) for each punch of one day, in time order."""
    out: list[str | None] = []
    unknown = 0
    last = len(punches) - 1
    for index, punch in enumerate(punches):
        if punch.state in IN_STATES:
            out.append("in")
        elif punch.state in OUT_STATES:
            out.append("out")
        elif undefined == "alternate":
            out.append("in" if unknown % 2 == 0 else "out")
            unknown += 1
        else:
            out.append("in" if index == 0 else "out" if index == last else None)
    return out


def build(work: date, punches: Sequence[DayPunch], undefined: UndefinedPolicy = "alternate") -> Timesheet:
    """The timesheet of one work day from its punches (any order; at least one)."""
    ordered = sorted(punches, key=lambda p: (p.at, p.state))
    flags: list[str] = []
    open_at: datetime | None = None
    worked = timedelta(0)
    pairs = 0
    first_in: datetime | None = None
    last_out: datetime | None = None
    for punch, direction in zip(ordered, directions(ordered, undefined), strict=True):
        if direction == "in":
            first_in = first_in or punch.at
            if open_at is not None:
                _flag(flags, "repeated_in")
                continue
            open_at = punch.at
        elif direction == "out":
            if open_at is None:
                _flag(flags, "out_without_in")
                continue
            worked += punch.at - open_at
            pairs += 1
            open_at = None
            last_out = punch.at
    if len(ordered) == 1:
        _flag(flags, "single_punch")
    elif open_at is not None:
        _flag(flags, "missing_check_out")
    return Timesheet(work, first_in, last_out, int(worked.total_seconds()), len(ordered), pairs, tuple(flags))


def _flag(flags: list[str], flag: str) -> None:
    if flag not in flags:
        flags.append(flag)
