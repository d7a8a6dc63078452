"""Which parked codes the re-matcher re-sends: those now mapped to an active employee."""

from __future__ import annotations

from schemas.employee import EmployeeRecord
from streams.rematch import mapped_codes

MAP = {
    "101": EmployeeRecord(attendance_code="101", employee_id="E-101"),
    "102": EmployeeRecord(attendance_code="102", employee_id="E-102", active=False),
}


def test_only_codes_of_active_employees_are_due() -> None:
    assert mapped_codes(["999", "102", "101"], MAP.get) == ["101"]
    assert mapped_codes([], MAP.get) == []
