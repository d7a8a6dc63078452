"""The local stack for real: `stack up` twice, status, the broker, migrations, private services."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from psycopg.conninfo import conninfo_to_dict

from infra import proc
from infra.kafka import KafkaBroker
from infra.migrate import migrate_postgres
from infra.postgres_server import PostgresServer
from infra.stack import StackStatus
from infra.topics import TopicSpec, ensure_topics, topic_specs
from tapstream.errors import StackError
from tapstream.settings import SUPPORTED_KAFKA_VERSIONS, Settings

# Written out, not globbed: adding a migration is a decision this test should be told about.
POSTGRES_MIGRATIONS = ["0001_foundation", "0002_pull_devices", "0003_timesheets", "0004_quarantine_unmatched",
                       "0005_records_by_employee_day"]

pytestmark = pytest.mark.integration

Cli = Callable[..., subprocess.CompletedProcess[str]]
WARM_UP_BUDGET_S = 5.0  # target is < 3 s; slack for a busy CI machine


def roundtrip(bootstrap: str, topic: str, count: int = 100, timeout_s: float = 60) -> list[bytes]:
    """Produce ``count`` keyed messages idempotently, read them back with a fresh group."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = [f"punch-{i}".encode() for i in range(count)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, key=f"device-{i % 7}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still undelivered after 30 s"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                pytest.fail(f"consumer error: {error}")
            if error is None:
                received.append(message.value() or b"")
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)
    return received


def test_second_up_is_quick_and_changes_nothing(stack: StackStatus, tapstream_cli: Cli) -> None:
    started = time.monotonic()
    done = tapstream_cli("stack", "up", "--json")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout)
    assert again["applied_now"] == []
    assert again["kafka"]["pid"] == stack.kafka.pid
    assert again["postgres"]["pid"] == stack.postgres.pid
    assert elapsed < WARM_UP_BUDGET_S, f"warm `stack up` took {elapsed:.1f} s"


def test_status_json_says_what_runs_where(
    stack: StackStatus, stack_settings: Settings, tapstream_cli: Cli
) -> None:
    done = tapstream_cli("stack", "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["healthy"] is True
    assert data["state_dir"] == str(stack_settings.state_dir)
    assert data["kafka"]["address"] == stack_settings.kafka.bootstrap
    if stack_settings.kafka.managed:
        assert data["kafka"]["version"] == stack_settings.kafka.version
        assert isinstance(data["kafka"]["pid"], int)
        assert data["kafka"]["data"].startswith(str(stack_settings.state_dir))
    for spec in topic_specs(stack_settings.topics):
        assert data["topics"][spec.name] == spec.partitions
    assert "0001_foundation" in data["migrations"]["postgres"]
    if stack_settings.postgres.dsn is not None:
        given = stack_settings.postgres.dsn.get_secret_value()
        secret = conninfo_to_dict(given).get("password")
        assert not secret or str(secret) not in done.stdout


def test_produce_consume_roundtrip_on_the_stack_broker(
    kafka_bootstrap: str, fresh_topic: Callable[..., str]
) -> None:
    roundtrip(kafka_bootstrap, fresh_topic(partitions=3))


def test_postgres_migrations_twice_change_nothing(pg_schema: Any) -> None:
    with psycopg.connect(pg_schema.dsn, autocommit=True) as conn:
        ledger = conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
        assert migrate_postgres(conn) == []
        assert conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall() == ledger
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{pg_schema.name}.attendance_records",)).fetchone()
        assert row == (True,)


CLICKHOUSE_TWICE = """
import json, sys, clickhouse_connect
from infra.migrate import migrate_clickhouse
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
first, second = migrate_clickhouse(client, "mig_test"), migrate_clickhouse(client, "mig_test")
tables = [r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'mig_test' ORDER BY name").result_rows]
ledger = client.query("SELECT count() FROM mig_test.schema_migrations").result_rows[0][0]
client.close()
print(json.dumps({"first": first, "second": second, "tables": tables, "ledger": ledger}))
"""


def test_clickhouse_migrations_twice_change_nothing(tmp_path: Path) -> None:
    # Own process: chDB runs one store path per process, and this one must not pin it.
    done = subprocess.run([sys.executable, "-c", CLICKHOUSE_TWICE, str(tmp_path / "ch")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["first"] == ["0001_foundation", "0002_rollups"] and result["second"] == []
    assert result["tables"] == ["arrivals_by_hour", "attendance_events", "attendance_events_latest",
                                "daily_arrivals", "daily_presence", "device_activity", "schema_migrations"]
    assert result["ledger"] == 2


def test_private_broker_of_the_other_version_serves(
    stack_settings: Settings, private_kafka: Callable[..., KafkaBroker]
) -> None:
    other = next(v for v in SUPPORTED_KAFKA_VERSIONS if v != stack_settings.kafka.version)
    broker = private_kafka(version=other)
    topic = "roundtrip"
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 2)])
    roundtrip(broker.bootstrap, topic, count=50)
    assert f"Kafka version: {other}" in (broker.log_dir / "server.log").read_text()


def test_private_broker_survives_stop_and_start(private_kafka: Callable[..., KafkaBroker]) -> None:
    broker = private_kafka()
    ensure_topics(broker.bootstrap, [TopicSpec("outage", 1)])
    roundtrip(broker.bootstrap, "outage", count=10)
    broker.stop()
    assert not broker.is_running() and not proc.port_open(broker.settings.port)
    broker.start()
    # A fresh group reads from the start: the ten messages outlived the restart.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "after-restart",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(["outage"])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 10 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        seen += message is not None and message.error() is None
    consumer.close()
    assert seen == 10


def test_storage_of_another_version_is_refused(private_kafka: Callable[..., KafkaBroker]) -> None:
    broker = private_kafka()
    broker.stop()
    other = next(v for v in SUPPORTED_KAFKA_VERSIONS if v != broker.version)
    wrong = KafkaBroker(broker.settings.model_copy(update={"version": other}), broker.data_dir, broker.log_dir)
    with pytest.raises(StackError, match=r"formatted by Kafka .* stack down --wipe"):
        wrong.start()


def test_private_postgres_starts_migrates_and_stops(private_postgres: Callable[[], PostgresServer]) -> None:
    server = private_postgres()
    with psycopg.connect(server.dsn) as conn:
        assert migrate_postgres(conn) == POSTGRES_MIGRATIONS  # a fresh server gets every one, in order
        assert migrate_postgres(conn) == []
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'devices'")}
    assert {"serial", "kind", "address", "port", "comm_key", "timezone", "site", "transport"} <= columns
    server.stop()
    assert not server.is_running()
