"""`tapstream employees sync`: make the compacted employees topic say what PostgreSQL says.

HR systems edit the Postgres ``employees`` table directly; the worker only sees the topic. A sync
reads both — the table, and the topic from its start to its current end (latest record per
attendance code, tombstones included) — and publishes only the difference: changed or new
records, and a tombstone for every code the table no longer has. Running it twice publishes
nothing the second time. ``--watch`` repeats it, so a mapping HR adds reaches the worker within
that many seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from confluent_kafka import Producer

from infra.employees import publish_employees
from schemas.employee import EmployeeRecord
from tapstream.errors import TapstreamError
from tapstream.topic_tail import LatestByKey

logger = logging.getLogger(__name__)

_SELECT = "SELECT attendance_code, employee_id, name, department, active FROM employees"


@dataclass(frozen=True)
class SyncPlan:
    """What the topic needs: records to publish, codes to delete (tombstones)."""

    upserts: list[EmployeeRecord]
    deletes: list[str]


def plan_sync(
    table: Mapping[str, EmployeeRecord], topic: Mapping[str, EmployeeRecord | None], *, empty_table_deletes: bool = True
) -> SyncPlan:
    """The difference between the table (the truth) and the topic's latest records.

    ``empty_table_deletes=False``: an empty table removes nothing (the worker's background sync:
    an empty table is far likelier a topic fed by another HR integration, or a table not yet
    filled, than a company without employees).
    """
    upserts = [record for code, record in sorted(table.items()) if topic.get(code) != record]
    deletes = sorted(code for code, record in topic.items() if record is not None and code not in table)
    if not table and not empty_table_deletes:
        deletes = []
    return SyncPlan(upserts, deletes)


def read_table(dsn: str) -> dict[str, EmployeeRecord]:
    """Every row of the Postgres employees table."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            rows = conn.execute(_SELECT).fetchall()
    except psycopg.Error as exc:
        raise TapstreamError(f"cannot read employees from PostgreSQL: {exc}") from exc
    return {r[0]: EmployeeRecord(attendance_code=r[0], employee_id=r[1], name=r[2], department=r[3], active=r[4])
            for r in rows}


class TopicMirror(LatestByKey[EmployeeRecord]):
    """The employees topic as a running process keeps it: the worker syncs every 30 s, and
    reading and decoding the whole topic each time stalled its event loop and sinks for up to
    0.7 s."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
        super().__init__(bootstrap, topic, EmployeeRecord, timeout_s)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[str, EmployeeRecord | None]:
    """The latest record (None = tombstone) per code, reading the topic up to its current end."""
    mirror = TopicMirror(bootstrap, topic, timeout_s)
    try:
        return mirror.refresh()
    finally:
        mirror.close()


def publish_tombstones(bootstrap: str, topic: str, codes: list[str], timeout_s: float = 30.0) -> int:
    """Delete codes from the compacted topic (a null value per key); wait for Kafka to confirm."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for code in codes:
        producer.produce(topic, key=code.encode(), value=None)
    if producer.flush(timeout_s):
        raise TapstreamError(f"tombstones for {topic} unconfirmed after {timeout_s:.0f}s")
    return len(codes)


def sync_employees(dsn: str, bootstrap: str, topic: str, *, empty_table_deletes: bool = True,
                   mirror: TopicMirror | None = None) -> SyncPlan:
    """Publish the difference between the table and the topic; return what was published.
    ``mirror``: the topic as a running process keeps it (else the topic is read whole)."""
    current = mirror.refresh() if mirror is not None else read_topic(bootstrap, topic)
    plan = plan_sync(read_table(dsn), current, empty_table_deletes=empty_table_deletes)
    if plan.upserts:
        publish_employees(bootstrap, topic, plan.upserts)
    if plan.deletes:
        publish_tombstones(bootstrap, topic, plan.deletes)
    changed = bool(plan.upserts or plan.deletes)  # the worker syncs every few seconds: quiet when idle
    logger.log(logging.INFO if changed else logging.DEBUG,
               "employees sync: %d published, %d removed", len(plan.upserts), len(plan.deletes))
    return plan
