"""`tapstream employees import`: into Postgres and the compacted topic; a re-run changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psycopg
from confluent_kafka import Consumer, TopicPartition

from infra.employee_sync import TopicMirror, read_table, sync_employees
from infra.employee_sync import read_topic as sync_read_topic
from infra.employees import import_employees
from schemas.codec import decode
from schemas.employee import EmployeeRecord

if TYPE_CHECKING:
    from conftest import PgSchema

CSV = "attendance_code,employee_id,name,department\n1001,E-1,Ada,Plant\n1002,E-2,Bo,Office\n"


def read_topic(bootstrap: str, topic: str) -> list[tuple[str, EmployeeRecord]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, low)])
        out = []
        while len(out) < high - low:
            msg = consumer.poll(10)
            assert msg is not None and msg.error() is None, "employees topic read timed out"
            out.append((msg.key().decode(), decode(EmployeeRecord, msg.value())))
        return out
    finally:
        consumer.close()


def imported(tmp_path: Path, dsn: str, bootstrap: str, fresh_topic: Callable[..., str]) -> str:
    """A fresh compacted topic, with CSV imported into it and into the schema's table."""
    topic = fresh_topic(partitions=1, config={"cleanup.policy": "compact"})
    path = tmp_path / "employees.csv"
    path.write_text(CSV, encoding="utf-8")
    import_employees(path, dsn=dsn, bootstrap=bootstrap, topic=topic)
    return topic


def test_import_lands_in_postgres_and_the_topic_and_is_idempotent(
    tmp_path: Path, pg_schema: PgSchema, kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = fresh_topic(partitions=1, config={"cleanup.policy": "compact"})
    path = tmp_path / "employees.csv"
    path.write_text(CSV, encoding="utf-8")

    first = import_employees(path, dsn=pg_schema.dsn, bootstrap=kafka_bootstrap, topic=topic)
    second = import_employees(path, dsn=pg_schema.dsn, bootstrap=kafka_bootstrap, topic=topic)

    assert (first.rows, first.postgres_changed, first.published) == (2, 2, 2)
    assert (second.rows, second.postgres_changed) == (2, 0)
    with psycopg.connect(pg_schema.dsn) as conn:
        rows = conn.execute("SELECT attendance_code, employee_id, name, department, active FROM employees ORDER BY 1").fetchall()
    assert rows == [("1001", "E-1", "Ada", "Plant", True), ("1002", "E-2", "Bo", "Office", True)]
    messages = read_topic(kafka_bootstrap, topic)
    assert [key for key, _ in messages] == ["1001", "1002", "1001", "1002"]
    assert all(key == record.attendance_code for key, record in messages)
    assert messages[0][1].employee_id == "E-1"


def test_a_changed_row_updates_postgres(tmp_path: Path, pg_schema: PgSchema, kafka_bootstrap: str, fresh_topic: Callable[..., str]) -> None:
    topic = imported(tmp_path, pg_schema.dsn, kafka_bootstrap, fresh_topic)
    path = tmp_path / "employees.csv"
    path.write_text(CSV.replace("E-2,Bo,Office", "E-2,Bo,Plant"), encoding="utf-8")
    result = import_employees(path, dsn=pg_schema.dsn, bootstrap=kafka_bootstrap, topic=topic)
    assert result.postgres_changed == 1
    with psycopg.connect(pg_schema.dsn) as conn:
        assert conn.execute("SELECT department FROM employees WHERE attendance_code = '1002'").fetchone() == ("Plant",)


def test_sync_publishes_what_hr_changed_in_postgres_and_nothing_twice(
    tmp_path: Path, pg_schema: PgSchema, kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = imported(tmp_path, pg_schema.dsn, kafka_bootstrap, fresh_topic)
    with psycopg.connect(pg_schema.dsn) as conn:  # HR edits the table directly
        conn.execute("UPDATE employees SET employee_id = 'E-1b', active = false WHERE attendance_code = '1001'")
        conn.execute("DELETE FROM employees WHERE attendance_code = '1002'")
        conn.execute("INSERT INTO employees (attendance_code, employee_id, name) VALUES ('1003', 'E-3', 'Cy')")
    first = sync_employees(pg_schema.dsn, kafka_bootstrap, topic)
    assert [r.attendance_code for r in first.upserts] == ["1001", "1003"] and first.deletes == ["1002"]
    latest = sync_read_topic(kafka_bootstrap, topic)
    assert latest == {**read_table(pg_schema.dsn), "1002": None}  # the topic now says what the table says
    again = sync_employees(pg_schema.dsn, kafka_bootstrap, topic)
    assert again.upserts == [] and again.deletes == []


def test_a_kept_mirror_follows_the_topic_and_syncs_like_a_fresh_read(
    tmp_path: Path, pg_schema: PgSchema, kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    topic = imported(tmp_path, pg_schema.dsn, kafka_bootstrap, fresh_topic)
    mirror = TopicMirror(kafka_bootstrap, topic)
    try:
        assert set(mirror.refresh()) == {"1001", "1002"}
        with psycopg.connect(pg_schema.dsn) as conn:  # HR edits the table while the worker runs
            conn.execute("DELETE FROM employees WHERE attendance_code = '1002'")
            conn.execute("INSERT INTO employees (attendance_code, employee_id, name) VALUES ('1003', 'E-3', 'Cy')")
        first = sync_employees(pg_schema.dsn, kafka_bootstrap, topic, mirror=mirror)
        assert [r.attendance_code for r in first.upserts] == ["1003"] and first.deletes == ["1002"]
        again = sync_employees(pg_schema.dsn, kafka_bootstrap, topic, mirror=mirror)  # reads its own writes
        assert again.upserts == [] and again.deletes == []
        assert mirror.latest == sync_read_topic(kafka_bootstrap, topic) == {**read_table(pg_schema.dsn), "1002": None}
    finally:
        mirror.close()
