"""Load the HR employee list (attendance code -> employee) into Postgres and the employees topic.

The CSV needs a header with at least ``attendance_code`` and ``employee_id``; ``name``,
``department`` and ``active`` (true/false/1/0/yes/no) are optional. The whole file is checked
first: any bad row stops the import with every problem listed by line, and nothing is written.
Importing the same file twice changes nothing.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from confluent_kafka import KafkaException, Producer
from pydantic import ValidationError

from schemas.codec import encode
from schemas.employee import EmployeeRecord
from tapstream.errors import ConfigError, TapstreamError

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, rows done, rows in all)

REQUIRED = ("attendance_code", "employee_id")
TRUE, FALSE = {"", "1", "true", "yes", "y", "active"}, {"0", "false", "no", "n", "inactive"}


class EmployeeImportError(TapstreamError):
    """The file has rows that cannot be imported; ``problems`` lists them by line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
        self.problems = list(problems)


@dataclass
class ImportResult:
    rows: int
    postgres_changed: int
    published: int
    problems: list[str] = field(default_factory=list)


def read_employees(path: Path) -> list[EmployeeRecord]:
    """Parse and validate the CSV; raise EmployeeImportError listing every bad row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise EmployeeImportError([f"header: missing column(s) {', '.join(missing)} (have {reader.fieldnames})"])
    records: list[EmployeeRecord] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        record = _record(row, line, problems)
        if record is None:
            continue
        if record.attendance_code in seen:
            problems.append(f"line {line}: attendance_code {record.attendance_code!r} repeats line {seen[record.attendance_code]}")
            continue
        seen[record.attendance_code] = line
        records.append(record)
    if problems:
        raise EmployeeImportError(problems)
    return records


def _record(row: dict[str, str | None], line: int, problems: list[str]) -> EmployeeRecord | None:
    values = {k: (v or "").strip() for k, v in row.items() if k is not None}
    active = values.get("active", "").lower()
    if active not in TRUE | FALSE:
        problems.append(f"line {line}: active must be true/false, got {active!r}")
        return None
    try:
        return EmployeeRecord(
            attendance_code=values.get("attendance_code", ""),
            employee_id=values.get("employee_id", ""),
            name=values.get("name", ""),
            department=values.get("department", ""),
            active=active in TRUE,
        )
    except ValidationError as exc:
        fields = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        problems.append(f"line {line}: {fields}")
        return None


UPSERT = """
INSERT INTO employees (attendance_code, employee_id, name, department, active, updated_at)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (attendance_code) DO UPDATE
   SET employee_id = EXCLUDED.employee_id, name = EXCLUDED.name,
       department = EXCLUDED.department, active = EXCLUDED.active, updated_at = now()
 WHERE (employees.employee_id, employees.name, employees.department, employees.active)
       IS DISTINCT FROM (EXCLUDED.employee_id, EXCLUDED.name, EXCLUDED.department, EXCLUDED.active)
"""


def store_employees(dsn: str, records: Sequence[EmployeeRecord], progress: Progress | None = None) -> int:
    """Upsert into Postgres in one transaction; return the rows that changed."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cur:
            changed = 0
            for done, r in enumerate(records, 1):
                cur.execute(UPSERT, (r.attendance_code, r.employee_id, r.name, r.department, r.active))
                changed += cur.rowcount
                _tick(progress, "postgres", done, len(records))
    except psycopg.Error as exc:
        raise TapstreamError(f"cannot store employees in PostgreSQL: {exc}") from exc
    return changed


def publish_employees(
    bootstrap: str, topic: str, records: Sequence[EmployeeRecord], timeout_s: float = 30.0, progress: Progress | None = None,
) -> int:
    """Produce every record to the compacted topic and wait until Kafka confirms each one."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "message.timeout.ms": int(timeout_s * 1000)})
    errors: list[str] = []
    sent = 0

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        for r in records:
            producer.produce(topic, key=r.attendance_code.encode(), value=encode(r), on_delivery=on_delivery)
            producer.poll(0)
            sent += 1
            _tick(progress, "publishing", sent, len(records))
    except KafkaException as exc:
        raise TapstreamError(f"cannot publish employees to {topic}: {exc}") from exc
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise TapstreamError(f"{remaining} employee record(s) unconfirmed, errors: {errors[:3]}")
    return sent


def _tick(progress: Progress | None, stage: str, done: int, total: int) -> None:
    # every 500 rows and the last: a bar redrawn per row costs more than the upsert
    if progress is not None and (done % 500 == 0 or done == total):
        progress(stage, done, total)


def import_employees(
    path: Path, *, dsn: str, bootstrap: str, topic: str, progress: Progress | None = None
) -> ImportResult:
    """Validate the CSV, then load it into Postgres and the employees topic.

    ``progress(stage, done, total)``: stage ``postgres`` then ``publishing``.
    """
    records = read_employees(path)
    changed = store_employees(dsn, records, progress)
    published = publish_employees(bootstrap, topic, records, progress=progress)
    logger.info("imported %d employees from %s (%d changed in postgres)", len(records), path, changed)
    return ImportResult(rows=len(records), postgres_changed=changed, published=published)
