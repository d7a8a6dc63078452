"""Rendered broker configuration, DSN masking and status rendering (no services)."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from infra import kafka
from infra.kafka import KafkaBroker, new_cluster_id, render_log_config, render_pom, render_server_properties
from infra.stack import ServiceStatus, StackStatus, embedded_owner, mask_dsn
from tapstream.errors import StackError
from tapstream.settings import SUPPORTED_KAFKA_VERSIONS, KafkaSettings


def properties(text: str) -> dict[str, str]:
    pairs = [ln.split("=", 1) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return {k: v for k, v in pairs}


@pytest.mark.parametrize("version", SUPPORTED_KAFKA_VERSIONS)
def test_server_properties_single_node_kraft(version: str) -> None:
    settings = KafkaSettings(version=version, port=19092, controller_port=19093)
    props = properties(render_server_properties(settings, Path("/state/kafka/data/storage")))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["log.dirs"] == "/state/kafka/data/storage"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert ("share.coordinator.state.topic.replication.factor" in props) == version.startswith("4.")


@pytest.mark.parametrize(("heap_mb", "buffer_mib"), [(256, 32), (512, 64), (2048, 256)])
def test_log_cleaner_buffer_is_an_eighth_of_the_heap(heap_mb: int, buffer_mib: int) -> None:
    # Kafka's 128 MiB default, allocated in one piece, made a 256 MiB test broker die of OOM.
    settings = KafkaSettings(heap_mb=heap_mb)
    props = properties(render_server_properties(settings, Path("/storage")))
    assert int(props["log.cleaner.dedupe.buffer.size"]) == buffer_mib * 1024 * 1024


def test_a_broker_that_dies_of_oom_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "server.log").write_text("INFO Starting the log cleaner\n")
    (logs / "stdout.log").write_text("WARN a line from an earlier run\n")

    def die(argv: list[str], log_file: Path, cwd: Path) -> int:
        with log_file.open("a") as f:
            f.write("Terminating due to java.lang.OutOfMemoryError: Java heap space\n")
        return 2**22 + 1  # above pid_max's default: no such process

    monkeypatch.setattr(kafka.proc, "spawn_detached", die)
    broker = KafkaBroker(KafkaSettings(heap_mb=256), tmp_path / "data", logs)
    broker.data_dir.mkdir()
    broker._launch("java", tmp_path / "lib", "-Dlog")
    with pytest.raises(StackError) as raised:
        broker._wait_ready(5)
    message = str(raised.value)
    assert "out of memory with a 256 MiB heap, raise TAPSTREAM_KAFKA__HEAP_MB" in message
    assert "Starting the log cleaner" in message and "Java heap space" in message
    assert "earlier run" not in message  # only this start's JVM output


def test_logging_backend_matches_the_major_version() -> None:
    assert "log4j-slf4j-impl" in render_pom("4.1.2") and "reload4j" not in render_pom("4.1.2")
    assert "slf4j-reload4j" in render_pom("3.9.2") and "log4j-core" not in render_pom("3.9.2")
    assert "<version>4.1.2</version>" in render_pom("4.1.2")
    name4, content4, flag4 = render_log_config("4.1.2", Path("/logs"))
    name3, content3, flag3 = render_log_config("3.9.2", Path("/logs"))
    assert (name4, flag4) == ("log4j2.properties", "-Dlog4j2.configurationFile=")
    assert (name3, flag3) == ("log4j.properties", "-Dlog4j.configuration=file:")
    assert "/logs/server.log" in content4 and "/logs/server.log" in content3


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/hr", "postgresql://app:***@db:5432/hr"),
        ("postgresql://app@db/hr", "postgresql://app@db/hr"),
        ("host=db user=app password=s3cret dbname=hr", "host=db user=app password=*** dbname=hr"),
        ("https://default:pw@ch.example:8443", "https://default:***@ch.example:8443"),
    ],
)
def test_mask_dsn_hides_passwords(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


def test_status_renders_as_text_and_json() -> None:
    status = StackStatus(
        state_dir="/s",
        kafka=ServiceStatus("kafka", True, True, "127.0.0.1:9092", "4.1.2", pid=42, rss_mib=300.0),
        postgres=ServiceStatus("postgres", False, True, "postgresql://app:***@db/hr"),
        clickhouse=ServiceStatus("clickhouse", True, True, "chdb:///s/clickhouse", note="embedded"),
        topics={"attendance.raw": 6, "employees": None},
        migrations={"postgres": ["0001_foundation"], "clickhouse": None},
    )
    assert not status.healthy  # a topic is missing
    text = status.to_text()
    assert "NOT healthy" in text and "employees (MISSING)" in text and "pid 42" in text
    data = json.loads(json.dumps(status.to_dict()))
    assert data["kafka"]["pid"] == 42 and data["healthy"] is False
    assert data["topics"] == {"attendance.raw": 6, "employees": None}


def test_embedded_store_owner_is_read_from_its_locked_status_file(tmp_path: Path) -> None:
    status_file = tmp_path / "status"
    assert embedded_owner(tmp_path) is None  # never opened
    status_file.write_text("PID: 4242\nStarted at: 2026-11-23 05:32:38\nRevision: 54515\n")
    assert embedded_owner(tmp_path) is None  # left behind by a dead owner: not locked
    with status_file.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a live chDB engine holds
        assert embedded_owner(tmp_path) == 4242
    assert embedded_owner(tmp_path) is None
