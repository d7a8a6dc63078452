"""TopicTail and LatestByKey over a fake consumer: what is new, and a topic created again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from schemas.employee import EmployeeRecord
from tapstream import topic_tail
from tapstream.topic_tail import LatestByKey


@dataclass
class Msg:
    _key: bytes
    _value: bytes | None
    _offset: int

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class FakeConsumer:
    """One partition; ``log`` is the topic (replace it to recreate the topic)."""

    log: list[tuple[bytes, bytes | None]] = []

    def __init__(self, _config: dict[str, Any]) -> None:
        self.position = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("T", (), {"error": None, "partitions": {0: None}})()
        return type("M", (), {"topics": {topic: meta}})()

    def assign(self, partitions: list[Any]) -> None:
        self.position = partitions[0].offset

    def get_watermark_offsets(self, _tp: Any, timeout: float) -> tuple[int, int]:
        return 0, len(self.log)

    def poll(self, _timeout: float) -> Msg | None:
        if self.position >= len(self.log):
            return None
        key, value = self.log[self.position]
        self.position += 1
        return Msg(key, value, self.position - 1)

    def close(self) -> None:
        pass


def record(code: str, employee: str) -> tuple[bytes, bytes]:
    return code.encode(), EmployeeRecord(attendance_code=code, employee_id=employee).model_dump_json().encode()


def test_only_new_records_are_read_and_a_topic_created_again_starts_the_map_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic_tail, "Consumer", FakeConsumer)
    FakeConsumer.log = [record("1", "E-1"), record("2", "E-2")]
    latest = LatestByKey("x", "employees", EmployeeRecord)
    assert {c: e and e.employee_id for c, e in latest.refresh().items()} == {"1": "E-1", "2": "E-2"}
    FakeConsumer.log = [*FakeConsumer.log, (b"2", None), (b"3", b"not json")]
    assert {c: e and e.employee_id for c, e in latest.refresh().items()} == {"1": "E-1", "2": None, "3": None}
    assert not latest._tail.restarted
    FakeConsumer.log = [record("9", "E-9")]  # deleted and created again: shorter than what was read
    assert {c: e and e.employee_id for c, e in latest.refresh().items()} == {"9": "E-9"}
    assert latest._tail.restarted
