"""The push endpoint against a real broker: order per device, and nothing lost across an outage.

Fixtures from tests/integration/conftest.py: ``kafka_bootstrap`` (the shared test broker),
``fresh_topic`` (unique topic names) and ``private_kafka`` (a broker of our own to stop/start).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producers.publisher import Publisher
from producers.push_server import make_app
from producers.registry import DeviceInfo, Registry
from producers.spool import Spool
from schemas.codec import decode
from schemas.punch import RawPunch
from tapstream.settings import Settings

pytestmark = pytest.mark.integration

DEVICES = [DeviceInfo(f"PUSH{n}", f"Gate {n}", "push", "Asia/Dhaka", "HQ", True) for n in range(3)]
LINES_PER_BATCH = 16
START = datetime(2024, 7, 28, 8, 0, 0)


def batch_body(device: int, batch: int) -> bytes:
    """A batch whose punch times increase with (batch, line): order is visible in the data."""
    lines = []
    for line in range(LINES_PER_BATCH):
        at = START + timedelta(minutes=batch, seconds=line)
        lines.append(f"{100 + device}\t{at:%Y-%m-%d %H:%M:%S}\t{line % 2}\t1\t\t0\t0\t")
    return ("\r\n".join(lines) + "\r\n").encode()


def make_topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    """Create topics on a private broker (fresh_topic creates them on the shared one)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    for future in futures.values():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[tuple[bytes, RawPunch]]:
    """Read ``topic`` from the start until ``expected`` messages (or the timeout)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"push-test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    found: list[tuple[bytes, RawPunch]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            found.append((key, decode(RawPunch, value)))
        # Linger briefly: duplicates beyond ``expected`` must be seen too.
        extra_until = time.monotonic() + 2
        while time.monotonic() < extra_until:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                key, value = msg.key(), msg.value()
                assert key is not None and value is not None
                found.append((key, decode(RawPunch, value)))
    finally:
        consumer.close()
    return found


def settings_for(tmp_path: Path, bootstrap: str, raw: str, dlq: str) -> Settings:
    settings = Settings(state_dir=tmp_path)
    settings.kafka.bootstrap_servers = bootstrap
    settings.topics.raw, settings.topics.dlq = raw, dlq
    return settings


@contextmanager
def pipeline(settings: Settings, **publisher_options: Any) -> Iterator[tuple[Spool, Publisher]]:
    spool = Spool(settings.path("spool", "push.sqlite3"))
    publisher = Publisher(spool, settings, **publisher_options)
    publisher.start()
    try:
        yield spool, publisher
    finally:
        publisher.stop(30)
        spool.close()


def post_batches(settings: Settings, spool: Spool, publisher: Publisher, batches: range) -> None:
    """POST every device's batches over HTTP; each reply must be `OK: <lines>`."""
    registry = Registry(lambda: DEVICES)
    registry.refresh()

    async def main() -> None:
        async with TestClient(TestServer(make_app(settings, spool, registry, publisher))) as client:
            for batch in batches:
                for n, device in enumerate(DEVICES):
                    response = await client.post(
                        f"/iclock/cdata?SN={device.serial}&table=ATTLOG&Stamp=9999", data=batch_body(n, batch)
                    )
                    assert (response.status, await response.text()) == (200, f"OK: {LINES_PER_BATCH}")

    asyncio.run(main())


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def assert_complete_and_ordered(found: list[tuple[bytes, RawPunch]], batches: int) -> None:
    """Every punch arrived, keyed by its serial; per key, first occurrences are in push order."""
    for n, device in enumerate(DEVICES):
        mine = [punch for key, punch in found if key == device.serial.encode()]
        assert all(p.device_serial == device.serial for p in mine)
        first_seen = list(dict.fromkeys(p.event_id for p in mine))
        times = {p.event_id: p.device_time for p in mine}
        assert len(first_seen) == batches * LINES_PER_BATCH, device.serial
        assert [times[i] for i in first_seen] == sorted(times[i] for i in first_seen), device.serial
        # A duplicate is the same event: identical id means identical content.
        by_id: dict[uuid.UUID, RawPunch] = {}
        for punch in mine:
            seen = by_id.setdefault(punch.event_id, punch)
            assert (seen.user_code, seen.device_time, seen.punch_state) == (
                punch.user_code, punch.device_time, punch.punch_state,
            )
        assert all(p.user_code == str(100 + n) for p in mine)


def test_batches_land_in_the_raw_topic_in_order(
    kafka_bootstrap: str, fresh_topic: Callable[..., str], tmp_path: Path
) -> None:
    raw, dlq = fresh_topic(partitions=3), fresh_topic(partitions=3)
    settings = settings_for(tmp_path, kafka_bootstrap, raw, dlq)
    with pipeline(settings) as (spool, publisher):
        post_batches(settings, spool, publisher, range(10))
        assert wait_for(lambda: spool.depth() == 0, 60), f"spool still holds {spool.depth()} rows"
    expected = 10 * LINES_PER_BATCH * len(DEVICES)
    found = consume(kafka_bootstrap, raw, expected)
    assert len(found) == expected  # no outage: no duplicates either
    assert_complete_and_ordered(found, 10)


def test_kafka_outage_spools_and_then_drains_without_loss(private_kafka: Callable[[], Any], tmp_path: Path) -> None:
    broker = private_kafka()
    raw, dlq = f"push.raw.{uuid.uuid4().hex[:8]}", f"push.dlq.{uuid.uuid4().hex[:8]}"
    make_topics(broker.bootstrap, raw, dlq)
    settings = settings_for(tmp_path, broker.bootstrap, raw, dlq)
    options = {"message_timeout_ms": 3_000, "backoff_initial_s": 0.2, "backoff_max_s": 1.0}
    with pipeline(settings, **options) as (spool, publisher):
        post_batches(settings, spool, publisher, range(0, 5))
        assert wait_for(lambda: spool.depth() == 0, 60)

        broker.stop()
        post_batches(settings, spool, publisher, range(5, 15))  # devices keep pushing: all `OK`
        assert spool.depth() > 0
        assert wait_for(lambda: publisher.failed_rounds > 0, 30)
        assert spool.depth() > 0  # nothing confirmed while the broker is down

        broker.start()
        post_batches(settings, spool, publisher, range(15, 20))
        assert wait_for(lambda: spool.depth() == 0, 120), f"spool still holds {spool.depth()} rows"
    found = consume(broker.bootstrap, raw, 20 * LINES_PER_BATCH * len(DEVICES))
    assert_complete_and_ordered(found, 20)
