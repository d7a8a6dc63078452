"""The two Faust adjustments the worker makes (streams.faust_tuning)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

import streams.faust_tuning
from streams.faust_tuning import tune_faust, with_fetch_wait


def test_the_consumer_faust_creates_gets_our_fetch_wait_before_it_starts() -> None:
    made: list[tuple[Any, Any]] = []

    def faust_create(thread: Any, transport: Any) -> Any:
        made.append((thread, transport))
        return SimpleNamespace(_fetch_max_wait_ms=1500)  # what Faust 0.15 hard-codes

    consumer = with_fetch_wait(faust_create, 50)("thread", "transport")
    assert consumer._fetch_max_wait_ms == 50
    assert made == [("thread", "transport")]


def test_tuning_twice_wraps_fausts_own_factory_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", AIOKafkaConsumerThread._create_worker_consumer)
    monkeypatch.setattr(ProducerBuffer, "max_messages", 100)

    def faust_create(thread: Any, transport: Any) -> Any:
        return SimpleNamespace(_fetch_max_wait_ms=1500)

    monkeypatch.setattr(streams.faust_tuning, "_FAUST_CREATE", faust_create)
    tune_faust(fetch_max_wait_ms=50, batch_max=5000)
    tune_faust(fetch_max_wait_ms=80, batch_max=10)
    installed = AIOKafkaConsumerThread._create_worker_consumer
    assert installed(None, None)._fetch_max_wait_ms == 80
    wrapped = [cell.cell_contents for cell in installed.__closure__ or ()]
    assert faust_create in wrapped  # Faust's factory itself, not the first call's wrapper
    assert ProducerBuffer.max_messages == 10_000  # never lowered by a later, smaller batch_max
