"""The HR list import: the whole file is checked first, every problem reported by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.employees import EmployeeImportError, read_employees
from tapstream.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "employees.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_becomes_records(tmp_path: Path) -> None:
    path = write(tmp_path, "attendance_code,employee_id,name,department,active\n"
                           "1001, E-1 ,Zoë Ñúñez,Plant,\n1002,E-2,Bo,Office,no\n")
    records = read_employees(path)
    assert [(r.attendance_code, r.employee_id, r.active) for r in records] == [("1001", "E-1", True), ("1002", "E-2", False)]
    assert records[0].name == "Zoë Ñúñez"


def test_optional_columns_may_be_absent_and_a_bom_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffattendance_code,employee_id\n7,E-7\n")
    [record] = read_employees(path)
    assert (record.name, record.department, record.active) == ("", "", True)


def test_every_bad_row_is_reported_and_nothing_is_returned(tmp_path: Path) -> None:
    path = write(tmp_path, "attendance_code,employee_id,active\n"
                           "1001,E-1,yes\n,E-2,yes\n1003,,yes\n1001,E-9,yes\n1005,E-5,maybe\n")
    with pytest.raises(EmployeeImportError) as raised:
        read_employees(path)
    problems = raised.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("line 3: attendance_code")
    assert problems[1].startswith("line 4: employee_id")
    assert "line 5: attendance_code '1001' repeats line 2" == problems[2]
    assert problems[3] == "line 6: active must be true/false, got 'maybe'"


def test_a_missing_required_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "code,employee\n1,E\n")
    with pytest.raises(EmployeeImportError, match="missing column.*attendance_code, employee_id"):
        read_employees(path)


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="cannot read"):
        read_employees(path)
