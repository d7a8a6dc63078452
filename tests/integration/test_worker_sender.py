"""The worker's librdkafka sender: sends are delivery futures, a record Kafka refuses fails its
future (so the batcher keeps the batch unacked), and close delivers what is queued."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from streams.sender import DeliveryError, KafkaSender
from tests.integration.pipeline_helpers import consume_all


def test_sends_resolve_once_kafka_has_the_records_in_order(kafka_bootstrap: str, fresh_topic: Callable[..., str]) -> None:
    topic = fresh_topic(1, prefix="e2e.sender")
    sender = KafkaSender(kafka_bootstrap)

    async def send_all() -> None:
        futures = [await sender.send(topic, b"DEV-1", f"punch {i}".encode(), {"tapstream-reason": b"test"})
                   for i in range(200)]
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert all(f.done() and f.exception() is None for f in futures)

    try:
        asyncio.run(send_all())
    finally:
        sender.close()
    messages = consume_all(kafka_bootstrap, topic, 200)
    assert [m.value() for m in messages] == [f"punch {i}".encode() for i in range(200)]
    assert {m.key() for m in messages} == {b"DEV-1"}
    assert all(dict(m.headers() or []) == {"tapstream-reason": b"test"} for m in messages)


def test_a_record_kafka_does_not_take_fails_its_future(kafka_bootstrap: str) -> None:
    # the local broker does not create topics on first use: this one never exists
    missing = f"e2e.sender.missing-{uuid.uuid4().hex[:8]}"
    sender = KafkaSender(kafka_bootstrap, delivery_timeout_s=3)

    async def send_one() -> None:
        future = await sender.send(missing, None, b"x", {})
        with pytest.raises(DeliveryError, match=missing):
            await asyncio.wait_for(future, 30)

    try:
        asyncio.run(send_one())
    finally:
        sender.close(timeout_s=1)
