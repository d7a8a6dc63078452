"""The generated scenario is what it claims to be (its expectation is only as good as its plan)."""

from __future__ import annotations

from collections import Counter

from tests.scenario import DAYS, LATE_MAPPED, generate, local_day_of


def test_the_scenario_has_every_disturbance_it_promises() -> None:
    s = generate()
    delivered = s.before_outage + s.during_outage + s.after_outage
    ids = Counter(p.event_id for p in delivered)
    assert set(ids) == set(s.records) | {p.event_id for p in s.clock_resets}  # every planned punch, once or more
    assert sum(n - 1 for n in ids.values()) >= 20  # duplicates
    assert any(p.user_code in LATE_MAPPED for p in s.before_outage)  # parked before their mapping
    assert len(s.clock_resets) == 3 and all(p.device_time.year == 2000 for p in s.clock_resets)
    late = [p for p in s.after_outage if p.event_id in s.records and local_day_of(p) < DAYS[2]]
    assert late  # punches of days 1-2 arriving after day 4's
    flags = {day.flags for day in s.timesheets.values()}
    assert {(), ("single_punch",), ("missing_check_out",)} <= flags
    assert generate().records == s.records  # deterministic


def test_every_planned_punch_lands_on_its_planned_work_day() -> None:
    s = generate()
    by_id = {p.event_id: p for p in s.before_outage + s.during_outage + s.after_outage}
    days = {(s.records[eid], local_day_of(by_id[eid])) for eid in s.records}
    assert days == set(s.timesheets)  # overnight check-outs belong to the evening's work day
    night = [p for p in by_id.values() if p.device_serial == "SCN-NIGHT" and p.punch_state == 1]
    assert night and all(p.device_time.date() > local_day_of(p) for p in night)
