"""Which employee records a sync publishes: only the difference between the table and the topic."""

from __future__ import annotations

from infra.employee_sync import plan_sync
from schemas.employee import EmployeeRecord


def emp(code: str, employee_id: str, active: bool = True) -> EmployeeRecord:
    return EmployeeRecord(attendance_code=code, employee_id=employee_id, name=f"N{code}", active=active)


def test_only_new_changed_and_removed_codes_are_published() -> None:
    table = {"1": emp("1", "E-1"), "2": emp("2", "E-2-new"), "3": emp("3", "E-3", active=False), "4": emp("4", "E-4")}
    topic = {"1": emp("1", "E-1"), "2": emp("2", "E-2"), "3": emp("3", "E-3"), "5": emp("5", "E-5"), "6": None}
    plan = plan_sync(table, topic)
    assert [r.attendance_code for r in plan.upserts] == ["2", "3", "4"]  # changed, deactivated, new
    assert plan.deletes == ["5"]  # gone from the table; "6" is already deleted


def test_a_synced_topic_needs_nothing() -> None:
    table = {"1": emp("1", "E-1")}
    assert plan_sync(table, dict(table)) == plan_sync({}, {}) == plan_sync({}, {"9": None})
    assert plan_sync(table, dict(table)).upserts == [] and plan_sync(table, dict(table)).deletes == []


def test_the_background_sync_never_empties_the_topic_from_an_empty_table() -> None:
    topic = {"5": emp("5", "E-5")}
    assert plan_sync({}, topic).deletes == ["5"]  # `tapstream employees sync`: the table is the truth
    assert plan_sync({}, topic, empty_table_deletes=False).deletes == []
    table = {"1": emp("1", "E-1")}
    assert plan_sync(table, topic, empty_table_deletes=False).deletes == ["5"]  # a filled table still rules
