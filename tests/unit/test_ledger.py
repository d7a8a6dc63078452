"""The worker's ledger: how consumed messages are sorted, and that a bug does not end it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import streams.ledger as ledger_module
from sinks.postgres_ledger import ParkedMessage
from sinks.postgres_quarantine import DlqMessage
from streams.delivery import Backoff
from streams.ledger import Ledger, split
from tapstream.settings import Settings


class FakeMessage:
    def __init__(self, topic: str, offset: int, value: bytes | None, headers: Any = None) -> None:
        self._topic, self._offset, self._value, self._headers = topic, offset, value, headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"DEV-1"

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Any:
        return self._headers

    def error(self) -> None:
        return None


def test_messages_are_sorted_into_parked_punches_and_dead_letters() -> None:
    messages = [
        FakeMessage("unmatched", 4, b"p", [("tapstream-reason", b"inactive_employee")]),
        FakeMessage("dlq", 9, b"d"),
        FakeMessage("unmatched", 5, b"q"),
    ]
    parked, dead = split(messages, "unmatched")  # type: ignore[arg-type]  # duck-typed messages
    assert parked == [ParkedMessage(1, 4, b"p", "inactive_employee"), ParkedMessage(1, 5, b"q", "unknown_employee")]
    assert dead == [DlqMessage(1, 9, b"DEV-1", b"d")]


def test_an_unexpected_error_restarts_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    subscribed = threading.Event()
    attempts: list[int] = []

    class FlakyConsumer:
        def __init__(self, config: dict[str, Any]) -> None:
            attempts.append(1)

        def subscribe(self, topics: list[str]) -> None:
            if len(attempts) == 1:
                raise RuntimeError("a bug")
            subscribed.set()

        def consume(self, n: int, timeout: float) -> list[Any]:
            return []

        def close(self) -> None:
            pass

    monkeypatch.setattr(ledger_module, "Consumer", FlakyConsumer)
    ledger = Ledger(Settings(), pool=None, backoff=Backoff(0.01, 0.01))  # type: ignore[arg-type]  # never written to
    ledger.start()
    try:
        assert subscribed.wait(5), "the ledger did not start over after the error"
    finally:
        ledger.stop()
    assert len(attempts) >= 2
