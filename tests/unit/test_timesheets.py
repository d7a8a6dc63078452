"""Timesheet rules: work-day boundary, pairing, flags, devices without a punch state."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from sinks.timesheets import DayPunch, build, directions, work_day

DAY = date(2026, 11, 23)


def p(hhmm: str, state: int, day: date = DAY) -> DayPunch:
    """A punch at local HH:MM of ``day``; UTC = local here (the zone does not matter to pairing)."""
    hour, minute = map(int, hhmm.split(":"))
    local = datetime(day.year, day.month, day.day, hour, minute)
    return DayPunch(at=local, local=local, state=state)


def test_work_day_moves_early_hours_to_the_previous_day() -> None:
    four = time(4, 0)
    assert work_day(datetime(2026, 11, 24, 2, 30), four) == DAY
    assert work_day(datetime(2026, 11, 24, 4, 0), four) == date(2026, 11, 24)
    assert work_day(datetime(2026, 11, 24, 0, 0), time(0, 0)) == date(2026, 11, 24)


def test_a_plain_day_pairs_in_and_out() -> None:
    sheet = build(DAY, [p("17:05", 1), p("08:58", 0)])
    assert (sheet.first_in, sheet.last_out) == (p("08:58", 0).at, p("17:05", 1).at)
    assert sheet.worked_s == 8 * 3600 + 7 * 60 and sheet.pairs == 1 and sheet.punches == 2 and sheet.flags == ()


def test_a_lunch_break_is_not_worked_time() -> None:
    sheet = build(DAY, [p("09:00", 0), p("12:00", 2), p("12:45", 3), p("17:00", 1)])
    assert sheet.worked_s == (3 * 60 + 4 * 60 + 15) * 60 and sheet.pairs == 2 and sheet.flags == ()


def test_an_overnight_shift_is_one_day_and_pairs_across_midnight() -> None:
    punches = [p("22:00", 0), p("06:10", 1, DAY + timedelta(days=1))]
    assert {work_day(x.local, time(8, 0)) for x in punches} == {DAY}
    sheet = build(DAY, punches)
    assert sheet.worked_s == 8 * 3600 + 600 and sheet.flags == ()


@pytest.mark.parametrize(
    ("punches", "flags", "worked_min"),
    [
        ([p("09:00", 0)], ("single_punch",), 0),
        ([p("09:00", 0), p("12:00", 1), p("13:00", 0)], ("missing_check_out",), 180),
        ([p("09:00", 0), p("09:01", 0), p("17:00", 1)], ("repeated_in",), 480),
        ([p("08:00", 1), p("09:00", 0), p("17:00", 1)], ("out_without_in",), 480),
    ],
)
def test_odd_days_are_flagged_and_count_only_what_pairs(punches: list[DayPunch], flags: tuple[str, ...],
                                                        worked_min: int) -> None:
    sheet = build(DAY, punches)
    assert sheet.flags == flags and sheet.worked_s == worked_min * 60


def test_devices_without_a_state_alternate_by_default() -> None:
    day = [p("08:00", 255), p("12:00", 255), p("13:00", 255), p("17:00", 255)]
    assert directions(day, "alternate") == ["in", "out", "in", "out"]
    sheet = build(DAY, day)
    assert sheet.worked_s == 8 * 3600 and sheet.pairs == 2 and sheet.flags == ()


def test_first_in_last_out_ignores_the_punches_between() -> None:
    day = [p("08:00", 255), p("12:00", 255), p("13:00", 255), p("17:30", 255)]
    assert directions(day, "first_last") == ["in", None, None, "out"]
    sheet = build(DAY, day, "first_last")
    assert sheet.worked_s == 9 * 3600 + 1800 and sheet.pairs == 1 and sheet.punches == 4


def test_a_late_punch_recomputes_the_day() -> None:
    before = build(DAY, [p("09:00", 0)])
    after = build(DAY, [p("09:00", 0), p("18:00", 1)])  # the check-out arrived hours later
    assert before.flags == ("single_punch",) and after.flags == () and after.worked_s == 9 * 3600
