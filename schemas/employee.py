"""The employee mapping: attendance code (device PIN) -> employee, from the HR system.

Carried on the compacted ``employees`` topic, key = attendance code, value = this record as
JSON; a null value (tombstone) removes the mapping.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

EMPLOYEE_VERSION: Final = 1


class EmployeeRecord(BaseModel):
    """Version 1 of the employee contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = EMPLOYEE_VERSION
    attendance_code: str = Field(min_length=1, max_length=64, description="PIN on the devices")
    employee_id: str = Field(min_length=1, max_length=64, description="the HR system's id")
    name: str = ""
    department: str = ""
    active: bool = True
