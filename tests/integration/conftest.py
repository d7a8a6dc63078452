"""Integration fixtures: the real local stack, a fresh topic / group / schema per test, and
private services that a test may stop and start (outages).

The session brings the default stack up with `tapstream stack up` (reusing a running demo
stack) in a subprocess: that keeps this process free of an embedded ClickHouse engine, since
chDB allows one store path per process and sink tests open their own. A stack that cannot
come up FAILS the run with the reason; integration tests never skip.

Every test in this folder is marked ``integration`` automatically.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from infra.kafka import KafkaBroker
from infra.migrate import migrate_postgres
from infra.postgres_server import PostgresServer
from infra.stack import StackStatus, status
from infra.topics import TopicSpec, ensure_topics
from sinks.clickhouse import open_client
from tapstream.settings import PostgresSettings, Settings
from tests.integration.pipeline_helpers import Pipeline

HERE = Path(__file__).parent
STACK_UP_TIMEOUT_S = 900  # a cold CI machine resolves the broker jars with Maven first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `tapstream <args>` with this interpreter; environment (TAPSTREAM_*) inherited."""
    return subprocess.run(
        [sys.executable, "-c", "from tapstream.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="session")
def tapstream_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``tapstream_cli(*args, timeout_s=120)``: run the `tapstream` CLI in a subprocess."""
    return run_cli


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    """The default Settings (TAPSTREAM_* environment, .env), as `tapstream` builds them."""
    return Settings()


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> StackStatus:
    """The local stack, up (started now or already running); fails the session if it cannot be."""
    try:
        done = run_cli("stack", "up", "--json", timeout_s=STACK_UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`tapstream stack up` did not finish within {STACK_UP_TIMEOUT_S} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            "the local stack is needed by the integration tests and did not come up "
            f"(`tapstream stack up` exit {done.returncode}):\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    current = status(stack_settings)
    if not current.healthy:
        pytest.fail(f"`tapstream stack up` succeeded but the stack is not healthy:\n{current}", pytrace=False)
    return current


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: StackStatus, stack_settings: Settings) -> str:
    """bootstrap.servers of the stack's broker."""
    return stack_settings.kafka.bootstrap


@pytest.fixture(scope="session")
def pg_dsn(stack: StackStatus, stack_settings: Settings) -> str:
    """DSN of the stack's PostgreSQL database (migrated in its default schema)."""
    return stack_settings.postgres.effective_dsn()


@dataclass(frozen=True)
class PgSchema:
    """A fresh, migrated schema: ``dsn`` connects with search_path set to it alone."""

    name: str
    dsn: str


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[PgSchema]:
    """A fresh schema with the migrations applied, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_dsn, options=f"-c search_path={name}")
    try:
        with psycopg.connect(dsn) as conn:
            migrate_postgres(conn)
        yield PgSchema(name, dsn)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def fresh_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory ``fresh_topic(partitions=1, config=None, prefix="test") -> name``; deleted after."""
    created: list[str] = []

    def make(partitions: int = 1, config: dict[str, str] | None = None, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, config or {})])
        created.append(name)
        return name

    yield make
    if created:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 3})
        for future in admin.delete_topics(created, operation_timeout=15).values():
            future.exception(timeout=20)  # best effort: a leftover test topic harms no one


@pytest.fixture
def fresh_group() -> str:
    """A consumer group id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def private_kafka(stack_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., KafkaBroker]]:
    """Factory ``private_kafka(version=None, heap_mb=256) -> KafkaBroker``, started on free ports
    in tmp_path; the test may stop() and start() it; stopped after the test."""
    brokers: list[KafkaBroker] = []

    def make(version: str | None = None, heap_mb: int = 256) -> KafkaBroker:
        port, controller_port = free_ports(2)
        settings = stack_settings.kafka.model_copy(update={
            "version": version or stack_settings.kafka.version, "bootstrap_servers": None,
            "port": port, "controller_port": controller_port, "heap_mb": heap_mb,
        })
        home = tmp_path / f"kafka-{len(brokers)}"
        broker = KafkaBroker(settings, home / "data", home / "logs")
        brokers.append(broker)
        broker.start(timeout_s=120)
        return broker

    yield make
    for broker in brokers:
        broker.stop(timeout_s=20)


@pytest.fixture
def private_postgres(stack_settings: Settings) -> Iterator[Callable[[], PostgresServer]]:
    """Factory ``private_postgres() -> PostgresServer`` on a free port, started; removed after."""
    servers: list[tuple[PostgresServer, Path]] = []

    def make() -> PostgresServer:
        # Not tmp_path: pytest keeps it private to root, and the server may run as `postgres`.
        home = Path(tempfile.mkdtemp(prefix="tapstream-pg-"))
        home.chmod(0o755)
        (port,) = free_ports(1)
        settings = PostgresSettings(port=port, database=stack_settings.postgres.database,
                                    user=stack_settings.postgres.user)
        server = PostgresServer(settings, home / "data", home / "postgres.log")
        servers.append((server, home))
        server.start()
        return server

    yield make
    for server, home in servers:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one embedded ClickHouse store this pytest process may open (chDB: one path per process)."""
    return tmp_path_factory.getbasetemp() / "chdb"


@pytest.fixture(scope="session")
def chdb_client(chdb_path: Path) -> Iterator[Client]:
    client = open_client(f"chdb://{chdb_path}", "default")
    yield client
    client.close()


@pytest.fixture
def make_pipeline(
    kafka_bootstrap: str, fresh_topic: Callable[..., str], tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    """Factory ``make_pipeline(dsn, raw_partitions=2, **env) -> Pipeline``; processes stopped after."""
    made: list[Pipeline] = []

    def make(dsn: str, raw_partitions: int = 2, **env: str) -> Pipeline:
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        pipeline = Pipeline(
            bootstrap=kafka_bootstrap,
            raw=fresh_topic(raw_partitions, prefix="e2e.raw"),
            unmatched=fresh_topic(2, prefix="e2e.unmatched"),
            dlq=fresh_topic(2, prefix="e2e.dlq"),
            employees=fresh_topic(1, {"cleanup.policy": "compact"}, prefix="e2e.employees"),
            device_status=fresh_topic(1, {"cleanup.policy": "compact"}, prefix="e2e.status"),
            raw_partitions=raw_partitions,
            live=fresh_topic(1, prefix="e2e.live"),
            alerts=fresh_topic(1, prefix="e2e.alerts"),
            app_id=f"e2e-{uuid.uuid4().hex[:12]}",
            dsn=dsn,
            state_dir=tmp_path / "state",
            logs=logs,
            env_overrides=env,
        )
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.stop_all()
        print(pipeline.logs_text())  # shown by pytest only when the test failed
    _delete_internal_topics(kafka_bootstrap, [p.app_id for p in made])


def _delete_internal_topics(bootstrap: str, app_ids: list[str]) -> None:
    """Drop the changelog topics Faust created for these app ids (best effort)."""
    if not app_ids:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    names = [t for t in admin.list_topics(timeout=10).topics if any(t.startswith(a + "-") for a in app_ids)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=15).values():
            future.exception(timeout=20)
