"""The one settings tree: every knob Tapstream has, read once at the entry point.

Environment variables use the prefix ``TAPSTREAM_`` and ``__`` between levels, e.g.
``TAPSTREAM_KAFKA__VERSION=3.9.2`` or ``TAPSTREAM_POSTGRES__DSN=postgresql://...``.
Nothing else in the code base reads ``os.environ``: build ``Settings()`` in the CLI and pass
it (or the section a component needs) down.
"""

from __future__ import annotations

from datetime import date, time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TAPSTREAM_"

# Kafka lines the project runs and tests. The first is the default; see README "Kafka versions".
SUPPORTED_KAFKA_VERSIONS = ("4.1.2", "3.9.2")


class KafkaSettings(BaseModel):
    """The broker: a local KRaft node started by `tapstream stack up`, or an existing cluster."""

    version: str = Field(SUPPORTED_KAFKA_VERSIONS[0], description="Kafka release run by `stack up`")
    bootstrap_servers: str | None = Field(
        None, description="existing cluster; when unset, the local broker on 127.0.0.1:port"
    )
    port: int = Field(9092, description="client port of the local broker")
    controller_port: int = Field(9093, description="KRaft controller port of the local broker")
    heap_mb: int = Field(512, description="JVM heap of the local broker, MiB")
    maven_repo: Path | None = Field(
        None, description="Maven local repository for broker jars (default: Maven's ~/.m2)"
    )
    dist_dir: Path = Field(
        default=Path("~/.cache/tapstream/kafka"),
        description="broker classpaths, one folder per version (resolved once, shared by state dirs)",
    )

    @property
    def managed(self) -> bool:
        """True when Tapstream starts and stops the broker itself."""
        return self.bootstrap_servers is None

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"127.0.0.1:{self.port}"


class TopicSettings(BaseModel):
    """Topic names, partition counts and retention (created by `stack up`)."""

    raw: str = "attendance.raw"
    unmatched: str = "attendance.unmatched"
    dlq: str = "attendance.dlq"
    employees: str = "employees"
    device_status: str = "devices.status"
    live: str = "attendance.live"
    alerts: str = "alerts"
    # Fixed for the life of a deployment: stream tables are partitioned like the raw topic.
    raw_partitions: int = 6
    # The employee map is small; one partition keeps its changelog and feed trivially aligned.
    employees_partitions: int = 1
    # The raw topic is the replay log: its retention is the replay horizon.
    raw_retention_days: int = 90
    dlq_retention_days: int = 365
    # The live feed is for watching and for a reconnecting browser: a week is plenty.
    live_retention_days: int = 7
    alerts_retention_days: int = 90


class PostgresSettings(BaseModel):
    """The HR database: a given server (dsn), or a local one started by `stack up`."""

    dsn: SecretStr | None = Field(None, description="libpq DSN; unset = the local managed server")
    port: int = Field(55432, description="port of the local managed server")
    database: str = "tapstream"
    user: str = "tapstream"
    pool_max: int = 4
    connect_timeout_s: int = Field(5, description="one connection attempt at most, seconds")
    acquire_timeout_s: float = Field(10.0, description="a write waits this long for a connection, then retries")

    @property
    def managed(self) -> bool:
        return self.dsn is None

    def effective_dsn(self) -> str:
        """The DSN clients connect with (the managed server trusts local connections)."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"


class ClickHouseSettings(BaseModel):
    """Analytics store: embedded engine (chdb://) by default, or a server (http(s)://)."""

    dsn: SecretStr | None = Field(None, description="chdb:///path or http(s)://user:pw@host:8123")
    database: str = "tapstream"


class PushSettings(BaseModel):
    """The ADMS/iclock endpoint that push devices POST to."""

    host: str = Field("0.0.0.0", description="listen address (devices reach it over the LAN)")
    port: int = Field(8081, description="listen port configured on the devices")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="larger request bodies get 413")
    delay_s: int = Field(10, description="`Delay` told to devices: seconds between polls")
    error_delay_s: int = Field(30, description="`ErrorDelay` told to devices after a failure")
    trans_interval_min: int = Field(1, description="`TransInterval` told to devices, minutes")
    publish_batch: int = Field(5000, description="spool rows handed to the producer per round")


class DeviceSettings(BaseModel):
    """What is assumed about devices the registry does not describe."""

    default_timezone: str = Field("UTC", description="IANA zone for devices without one")
    registry_refresh_s: float = Field(30.0, description="how often producers re-read the registry, seconds")


class PullSettings(BaseModel):
    """The pull producer (`tapstream pull`): how it talks to devices on port 4370 and when."""

    timeout_s: float = Field(10.0, description="one device request waits this long, seconds")
    live_tick_s: float = Field(1.0, description="live capture wakes this often to check its schedule, seconds")
    catchup_interval_s: float = Field(300.0, description="log catch-up pass while live capture runs, seconds")
    info_refresh_s: float = Field(300.0, description="refresh serial, firmware, counts and clock, seconds")
    status_interval_s: float = Field(60.0, description="publish each device's status at least this often, seconds")
    backoff_initial_s: float = Field(5.0, description="first reconnect delay after a failure, seconds")
    backoff_max_s: float = Field(300.0, description="longest reconnect delay, seconds")
    alert_after_failures: int = Field(5, description="consecutive failures before a device alert")
    realtime_off_after_s: float = Field(
        24 * 3600.0, description="a device failing this long is polled instead of live-captured, seconds"
    )
    publish_batch: int = Field(5000, description="spool rows handed to the Kafka producer per round")


class ValidationSettings(BaseModel):
    """What the worker accepts as a plausible punch; the rest is quarantined with a reason."""

    earliest_punch: date = Field(date(2010, 1, 1), description="earlier punches mean a reset device clock")
    max_future_s: float = Field(86_400.0, description="a punch this far after its receipt is a clock gone wrong, seconds")
    punch_states: list[int] = Field(
        [0, 1, 2, 3, 4, 5, 255], description="punch states devices may report (255 = none)"
    )


class TimesheetSettings(BaseModel):
    """How punches become daily timesheets in PostgreSQL (rules: sinks/timesheets.py)."""

    day_start: time = Field(time(4, 0), description="work days start at this local time (overnight shifts)")
    undefined_state: Literal["alternate", "first_last"] = Field(
        "alternate", description="devices without a punch state: alternate in/out, or first in / last out"
    )


class AnalyticsSettings(BaseModel):
    """How `tapstream report` judges arrivals (reports: infra/reports.py, docs/analytics.md)."""

    work_start: time = Field(time(9, 0), description="work starts at this local (device) time; later arrivals are late")
    grace_minutes: int = Field(5, ge=0, description="a first arrival up to this many minutes after work_start is on time")


class WorkerSettings(BaseModel):
    """The Faust stream worker."""

    app_id: str = Field("tapstream-worker", description="Faust app id = Kafka consumer group")
    batch_max: int = Field(5000, description="events per sink batch at most")
    fetch_max_wait_ms: int = Field(
        50, ge=1, le=1500, description="how long the broker may hold the worker's fetch for new records, ms "
        "(Faust's own 1500 held whole batches back: streams/faust_tuning.py)"
    )
    batch_within_s: float = Field(
        0.005, description="an idle worker waits this long for more events before it flushes, seconds "
        "(under load a batch is what arrived during the previous flush, up to batch_max)"
    )
    batches_in_flight: int = Field(
        32, ge=1, description="flushed batches not yet acked at most: the sinks after the first (the "
        "system of record, whose rows go live at once) and Kafka's confirmation may trail it by this many"
    )
    trailing_every_s: float = Field(
        0.25, ge=0, description="the sinks after the first write at most this often, seconds: what was "
        "flushed meanwhile goes in one write (streams/trailing.py)"
    )
    dedup_window_s: int = Field(6 * 3600, description="stream-side dedup memory, seconds")
    store: str = Field("rocksdb://", description="Faust table store (memory:// or rocksdb://)")
    web_port: int = Field(6066, description="Faust's web port (health, tables)")
    sinks: list[Literal["postgres", "clickhouse"]] = ["postgres", "clickhouse"]
    retry_initial_s: float = Field(0.5, description="first sink retry backoff, seconds")
    retry_max_s: float = Field(30.0, description="longest sink retry backoff, seconds")
    session_timeout_s: float = Field(
        60.0, description="Kafka group session timeout: how long a crashed worker keeps its partitions"
    )
    heartbeat_interval_s: float = Field(3.0, description="Kafka group heartbeat interval, seconds")
    rematch_interval_s: float = Field(5.0, description="look for parked punches whose code is now mapped, seconds")
    rematch_cooldown_s: float = Field(60.0, description="a re-sent parked punch is not re-sent again for this long, seconds")
    employee_sync_s: float = Field(
        30.0, description="publish Postgres `employees` changes to the topic this often, seconds (0: off)"
    )
    ledger_batch: int = Field(2000, description="unmatched/dlq messages per Postgres ledger write at most")


class MonitorSettings(BaseModel):
    """The live monitor (`tapstream monitor`): SSE at /events, the page at /, alerts."""

    host: str = Field("127.0.0.1", description="listen address of the page, /events and /metrics")
    port: int = Field(8090, description="listen port")
    ring_events: int = Field(50_000, description="recent events kept in memory for reconnecting clients")
    client_buffer: int = Field(
        1000, description="events a client may fall behind before it is told so and disconnected"
    )
    heartbeat_s: float = Field(15.0, description="an SSE comment this often keeps idle connections open, seconds")
    snapshot_interval_s: float = Field(5.0, description="device grid, counters and lag refreshed this often, seconds")
    backlog_events: int = Field(
        5000, description="live punches read back from before the start, so the ring is not empty at first"
    )
    run_alerts: bool = Field(True, description="evaluate and publish alerts in the monitor process")


class AlertSettings(BaseModel):
    """When the monitor raises an alert (one per incident, one resolution); docs/alerts.md."""

    interval_s: float = Field(15.0, description="conditions evaluated this often, seconds")
    device_offline_s: float = Field(600.0, description="a device not seen for this long is offline, seconds")
    clock_drift_s: float = Field(120.0, description="a device clock this far off true time, seconds")
    log_memory_pct: float = Field(90.0, description="a device log fuller than this, percent of capacity")
    spool_backlog_rows: int = Field(10_000, description="rows waiting in a producer spool")
    spool_backlog_age_s: float = Field(300.0, description="oldest row waiting in a spool, seconds")
    consumer_lag: int = Field(10_000, description="raw messages the worker has not committed")
    sink_failing_s: float = Field(60.0, description="a sink failing for this long, seconds")
    webhook_url: SecretStr | None = Field(None, description="alerts are also POSTed here as JSON (optional)")
    webhook_timeout_s: float = Field(5.0, description="one webhook POST waits this long, seconds")
    webhook_attempts: int = Field(3, ge=1, description="POSTs of one alert before the webhook is given up on")
    resolve_after_checks: int = Field(
        2, ge=1, description="an incident resolves after its condition was clear this many evaluations in a row"
    )


class MetricsSettings(BaseModel):
    """Prometheus /metrics of the long-running processes (push and monitor serve it on their own port)."""

    host: str = Field("127.0.0.1", description="listen address of the worker's and pull producer's /metrics")
    worker_port: int = Field(9101, description="the worker's /metrics port (0: off)")
    pull_port: int = Field(9102, description="the pull producer's /metrics port (0: off)")


class Settings(BaseSettings):
    """Root of the tree. `Settings()` reads TAPSTREAM_* variables and a `.env` file if present."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    state_dir: Path = Field(
        Path(".tapstream"), description="broker data, managed Postgres, embedded ClickHouse, spools, logs"
    )
    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    postgres: PostgresSettings = PostgresSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    push: PushSettings = PushSettings()
    devices: DeviceSettings = DeviceSettings()
    pull: PullSettings = PullSettings()
    timesheets: TimesheetSettings = TimesheetSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    validation: ValidationSettings = ValidationSettings()
    worker: WorkerSettings = WorkerSettings()
    monitor: MonitorSettings = MonitorSettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _absolute_state_dir(self) -> Settings:
        # Relative paths would silently change meaning with the working directory.
        self.state_dir = self.state_dir.expanduser().resolve()
        return self

    def clickhouse_dsn(self) -> str:
        """The ClickHouse DSN in force: the given one, or the embedded store in state_dir."""
        if self.clickhouse.dsn is not None:
            return self.clickhouse.dsn.get_secret_value()
        return f"chdb://{self.state_dir / 'clickhouse'}"

    def path(self, *parts: str) -> Path:
        """A path under the state folder."""
        return self.state_dir.joinpath(*parts)
