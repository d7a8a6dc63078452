"""The alert runner's plumbing without Kafka: delivery bookkeeping and unreadable sources."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from monitor.alerting import AlertRunner, publish
from schemas.alert import Alert, AlertKind, AlertState
from schemas.codec import decode
from tapstream.settings import Settings

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def alert(subject: str, state: AlertState = AlertState.FIRING) -> Alert:
    return Alert(alert_id=f"id-{subject}", kind=AlertKind.CONSUMER_LAG, subject=subject, state=state,
                 message="m", started_at=T0, at=T0)


class FakeProducer:
    """Delivers every message except those whose key is in ``refuse``, on flush."""

    def __init__(self, refuse: set[bytes]) -> None:
        self.refuse = refuse
        self.queued: list[tuple[str, bytes, bytes, Callable[..., None]]] = []
        self.delivered: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, *, key: bytes, value: bytes, on_delivery: Callable[..., None]) -> None:
        self.queued.append((topic, key, value, on_delivery))

    def flush(self, _timeout: float) -> int:
        for topic, key, value, callback in self.queued:
            if key in self.refuse:
                callback("broker down", None)
            else:
                self.delivered.append((topic, key, value))
                callback(None, None)
        self.queued = []
        return 0


def test_publish_keys_by_incident_and_returns_the_undelivered_in_order() -> None:
    producer = FakeProducer(refuse={b"consumer_lag:b", b"consumer_lag:d"})
    alerts = [alert("a"), alert("b"), alert("c"), alert("d", AlertState.RESOLVED)]
    left = publish(producer, "alerts", alerts)  # type: ignore[arg-type]  # a fake stands in for Producer
    assert [a.subject for a in left] == ["b", "d"]
    assert [(t, k) for t, k, _ in producer.delivered] == [("alerts", b"consumer_lag:a"), ("alerts", b"consumer_lag:c")]
    assert decode(Alert, producer.delivered[0][2]) == alerts[0]


def test_an_unreadable_source_is_unknown_and_logged_once_until_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    runner = AlertRunner(Settings(), collect=lambda: None)  # type: ignore[arg-type, return-value]  # never called
    answers: list[Any] = [OSError("refused"), OSError("refused"), {"x": 1}, OSError("timeout")]

    def read() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with caplog.at_level(logging.INFO, logger="monitor.alerting"):
        results = [runner._soft("device statuses", read) for _ in range(4)]
    assert results == [None, None, {"x": 1}, None]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "alerts: device statuses unreadable, its incidents neither fire nor resolve: OSError: refused",
        "alerts: device statuses readable again",
        "alerts: device statuses unreadable, its incidents neither fire nor resolve: OSError: timeout",
    ]
