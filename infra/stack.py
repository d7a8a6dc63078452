"""The local stack behind `tapstream stack up | down | status`.

Everything lives under ``settings.state_dir``::

    kafka/data, kafka/logs            the managed broker (when no bootstrap_servers is set)
    postgres/data, postgres/postgres.log  the managed PostgreSQL (when no DSN is set)
    clickhouse/                       the embedded ClickHouse store (when no DSN is set)

``up`` is idempotent: services already running are only checked, migrations already applied
are skipped, so a second ``up`` takes about a second. The embedded ClickHouse store can be
open in one process only; while a worker owns it, ``up`` leaves it alone (the worker migrates
it when it opens its sink).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError

from infra import proc
from infra.kafka import KafkaBroker, answers_metadata
from infra.migrate import migrate_clickhouse, migrate_postgres
from infra.postgres_server import PostgresServer
from infra.topics import TopicState, ensure_topics, list_topics, topic_specs
from sinks.clickhouse import open_client
from tapstream.errors import ConfigError, StackError, TapstreamError, TransientSinkError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

CHDB_SCHEME = "chdb://"
T = TypeVar("T")


@dataclass
class ServiceStatus:
    """Where one service runs and in what state; ``address`` never carries a password."""

    name: str
    managed: bool
    running: bool
    address: str
    version: str | None = None
    pid: int | None = None
    rss_mib: float | None = None
    data: str | None = None
    log: str | None = None
    note: str = ""


@dataclass
class StackStatus:
    """The whole stack: services, topics (name -> partitions, None = missing), migrations."""

    state_dir: str
    kafka: ServiceStatus
    postgres: ServiceStatus
    clickhouse: ServiceStatus
    topics: dict[str, int | None] = field(default_factory=dict)
    migrations: dict[str, list[str] | None] = field(default_factory=dict)
    applied_now: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """All three services answer and every topic exists."""
        services = (self.kafka, self.postgres, self.clickhouse)
        return all(s.running for s in services) and None not in self.topics.values()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}

    def to_text(self) -> str:
        lines = [f"Tapstream stack ({'healthy' if self.healthy else 'NOT healthy'}), state in {self.state_dir}"]
        for s in (self.kafka, self.postgres, self.clickhouse):
            lines.extend(_service_lines(s))
        topics = ", ".join(f"{n} ({p if p is not None else 'MISSING'})" for n, p in self.topics.items())
        lines.append(f"  {'topics':<11} {topics or '(broker unreachable)'}")
        ledgers = [f"{engine}: {', '.join(names) if names else '(none)'}"
                   for engine, names in self.migrations.items() if names is not None]
        lines.append(f"  {'migrations':<11} {'; '.join(ledgers) or '(not read)'}")
        if self.applied_now:
            lines.append(f"  {'applied now':<11} {', '.join(self.applied_now)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _service_lines(s: ServiceStatus) -> list[str]:
    state = "running" if s.running else "DOWN"
    facts = ["managed" if s.managed else "external"]
    facts += [f"{s.name} {s.version}"] if s.version else []
    facts += [f"pid {s.pid}"] if s.pid else []
    facts += [f"{s.rss_mib:.0f} MiB RSS"] if s.rss_mib else []
    lines = [f"  {s.name:<11} {state:<8} {s.address}  ({', '.join(facts)})"]
    where = [f"data {s.data}"] if s.data else []
    where += [f"log {s.log}"] if s.log else []
    if where:
        lines.append(f"  {'':<20} {'  '.join(where)}")
    if s.note:
        lines.append(f"  {'':<20} {s.note}")
    return lines


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ***; URLs and libpq key=value strings."""
    parts = urlsplit(dsn)
    if parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def kafka_broker(settings: Settings) -> KafkaBroker:
    """The managed broker of this state folder."""
    return KafkaBroker(settings.kafka, settings.path("kafka", "data"), settings.path("kafka", "logs"))


def postgres_server(settings: Settings) -> PostgresServer:
    """The managed PostgreSQL of this state folder."""
    return PostgresServer(
        settings.postgres, settings.path("postgres", "data"), settings.path("postgres", "postgres.log")
    )


def embedded_clickhouse_path(settings: Settings) -> Path | None:
    """Folder of the embedded ClickHouse store, or None when the DSN names a server."""
    dsn = settings.clickhouse_dsn()
    return Path(dsn.removeprefix(CHDB_SCHEME)) if dsn.startswith(CHDB_SCHEME) else None


def embedded_owner(path: Path) -> int | None:
    """Pid of the process holding the embedded store at ``path`` open (-1 if unknown), or None."""
    status = path / "status"  # chDB, like clickhouse-server, flocks this file while open
    if not proc.flock_held(status):
        return None
    found = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
    return int(found.group(1)) if found else -1


def up(settings: Settings) -> StackStatus:
    """Start what is managed, check what is external, create topics, run migrations."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    # Kafka and PostgreSQL start in parallel: a cold start is the slower of the two, not the sum.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stack-up") as pool:
        kafka_done = pool.submit(_up_kafka, settings)
        postgres_done = pool.submit(_up_postgres, settings)
        clickhouse = _gather(errors, lambda: _up_clickhouse(settings)) or ClickHouseUp([], None, "")
        _gather(errors, kafka_done.result)
        postgres_applied = _gather(errors, postgres_done.result)
    if errors:
        raise StackError("stack up failed:\n  " + "\n  ".join(errors))
    now = status(settings)
    if clickhouse.note:
        now.clickhouse.note = clickhouse.note
    now.migrations["clickhouse"] = clickhouse.ledger
    now.applied_now = [f"postgres/{n}" for n in postgres_applied or []]
    now.applied_now += [f"clickhouse/{n}" for n in clickhouse.applied]
    return now


def _gather(errors: list[str], step: Callable[[], T]) -> T | None:
    """Run ``step``; a TapstreamError is added to ``errors`` so every failure gets reported."""
    try:
        return step()
    except TapstreamError as err:
        errors.append(str(err))
        return None


def _up_kafka(settings: Settings) -> list[TopicState]:
    if settings.kafka.managed:
        kafka_broker(settings).start()
    elif not answers_metadata(settings.kafka.bootstrap, timeout_s=10):
        raise StackError(f"Kafka at {settings.kafka.bootstrap} does not answer (TAPSTREAM_KAFKA__BOOTSTRAP_SERVERS)")
    return ensure_topics(settings.kafka.bootstrap, topic_specs(settings.topics))


def _up_postgres(settings: Settings) -> list[str]:
    if settings.postgres.managed:
        postgres_server(settings).start()
    dsn = settings.postgres.effective_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return migrate_postgres(conn)
    except psycopg.OperationalError as err:
        raise StackError(f"cannot connect to PostgreSQL at {mask_dsn(dsn)}: {err}") from err


@dataclass
class ClickHouseUp:
    """What `up` did to ClickHouse: migrations applied, the whole ledger (None = not opened)."""

    applied: list[str]
    ledger: list[str] | None
    note: str


def _up_clickhouse(settings: Settings) -> ClickHouseUp:
    """Migrate ClickHouse; a store busy in another process is a note, not an error."""
    path = embedded_clickhouse_path(settings)
    if path is not None:
        owner = embedded_owner(path)
        if owner is not None:
            return ClickHouseUp([], None, _busy_note(owner))
        path.mkdir(parents=True, exist_ok=True)
    try:
        client = open_client(settings.clickhouse_dsn(), settings.clickhouse.database)
    except (TransientSinkError, ConfigError) as err:
        if path is not None:  # lost a race for the lock, or this process runs chDB elsewhere
            # chDB's own message here is a misleading BAD_ARGUMENTS; the owner is what matters.
            logger.debug("cannot open the embedded ClickHouse store: %s", err)
            return ClickHouseUp([], None, _busy_note(embedded_owner(path) or -1))
        raise StackError(f"ClickHouse at {mask_dsn(settings.clickhouse_dsn())} unavailable: {err}") from err
    database = settings.clickhouse.database
    try:
        applied = migrate_clickhouse(client, database)
        rows = client.query(f"SELECT name FROM {database}.schema_migrations ORDER BY version").result_rows
        return ClickHouseUp(applied, [str(r[0]) for r in rows], "")
    finally:
        client.close()


def _busy_note(owner: int) -> str:
    who = f"pid {owner}" if owner > 0 else "another process"
    return f"embedded ClickHouse in use by {who}; its owner migrates it at start"


def status(settings: Settings) -> StackStatus:
    """What runs where; starts nothing and never opens the embedded ClickHouse store."""
    kafka = _kafka_status(settings)
    topics: dict[str, int | None] = {s.name: None for s in topic_specs(settings.topics)}
    if kafka.running:
        try:
            present = list_topics(settings.kafka.bootstrap, timeout_s=3)
            topics = {name: present.get(name) for name in topics}
        except StackError as err:
            kafka.note = str(err)
    postgres, postgres_ledger = _postgres_status(settings)
    clickhouse = _clickhouse_status(settings)
    return StackStatus(
        state_dir=str(settings.state_dir), kafka=kafka, postgres=postgres, clickhouse=clickhouse,
        topics=topics, migrations={"postgres": postgres_ledger, "clickhouse": None},
    )


def _kafka_status(settings: Settings) -> ServiceStatus:
    bootstrap = settings.kafka.bootstrap
    if not settings.kafka.managed:
        return ServiceStatus("kafka", False, answers_metadata(bootstrap, 3.0), bootstrap)
    broker = kafka_broker(settings)
    pid = broker.pid()
    formatted = broker.version_file.read_text().strip() if broker.version_file.exists() else None
    return ServiceStatus(
        "kafka", True, pid is not None and answers_metadata(bootstrap, 3.0), bootstrap,
        version=formatted or settings.kafka.version, pid=pid,
        rss_mib=proc.rss_mib(pid) if pid else None,
        data=str(broker.data_dir), log=str(broker.log_dir / "server.log"),
    )


def _postgres_status(settings: Settings) -> tuple[ServiceStatus, list[str] | None]:
    dsn = settings.postgres.effective_dsn()
    service = ServiceStatus("postgres", settings.postgres.managed, False, mask_dsn(dsn))
    if settings.postgres.managed:
        server = postgres_server(settings)
        service.pid, service.version = server.pid(), server.data_version()
        service.rss_mib = proc.rss_mib(service.pid) if service.pid else None
        service.data, service.log = str(server.data_dir), str(server.log_file)
        if service.pid is None:
            return service, None
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            service.running = True
            rows = conn.execute(
                "SELECT name FROM schema_migrations ORDER BY version"
                if _has_ledger(conn) else "SELECT NULL WHERE false"
            ).fetchall()
            return service, [str(r[0]) for r in rows]
    except psycopg.Error as err:
        service.note = f"cannot connect: {str(err).strip().splitlines()[0]}"
        return service, None


def _has_ledger(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _clickhouse_status(settings: Settings) -> ServiceStatus:
    dsn = settings.clickhouse_dsn()
    path = embedded_clickhouse_path(settings)
    if path is None:
        # A server: answering `SELECT 1` is being up.
        try:
            clickhouse_connect.get_client(dsn=dsn).command("SELECT 1")
            return ServiceStatus("clickhouse", False, True, mask_dsn(dsn))
        except ClickHouseError as err:
            return ServiceStatus("clickhouse", False, False, mask_dsn(dsn), note=str(err).splitlines()[0])
    owner = embedded_owner(path)
    note = _busy_note(owner).split(";")[0] if owner is not None else "embedded; no process has it open"
    # An embedded store is no server: it is "running" once its folder exists (and can be opened).
    return ServiceStatus("clickhouse", True, path.is_dir(), dsn, version=_chdb_version(), data=str(path),
                         pid=owner if owner and owner > 0 else None, note=note)


def _chdb_version() -> str | None:
    try:
        return metadata.version("chdb-core")  # the ClickHouse engine inside chDB
    except metadata.PackageNotFoundError:
        return None


def down(settings: Settings, wipe: bool = False) -> list[str]:
    """Stop the managed services; with ``wipe`` also delete their data. What was done, as text."""
    path = embedded_clickhouse_path(settings)
    owner = embedded_owner(path) if wipe and path is not None else None
    if owner is not None:
        raise StackError(f"{_busy_note(owner).split(';')[0]}: stop it before wiping its data")
    done: list[str] = []
    if settings.kafka.managed:
        broker = kafka_broker(settings)
        if broker.is_running():
            broker.stop()
            done.append("stopped Kafka")
    if settings.postgres.managed:
        server = postgres_server(settings)
        if server.is_running():
            server.stop()
            done.append("stopped PostgreSQL")
    if wipe:
        done.extend(_wipe(settings, path))
    return done or ["nothing was running"]


def _wipe(settings: Settings, clickhouse_path: Path | None) -> list[str]:
    targets = []
    if settings.kafka.managed:
        targets.append(settings.path("kafka"))
    if settings.postgres.managed:
        targets.append(settings.path("postgres"))
    if clickhouse_path is not None:
        targets.append(clickhouse_path)
    # Only what the stack owns: producer spools under state_dir hold undelivered punches.
    wiped = []
    for target in targets:
        if target.exists():
            shutil.rmtree(target)
            wiped.append(f"wiped {target}")
    return wiped
