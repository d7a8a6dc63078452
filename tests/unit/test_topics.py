"""Topic specs from settings, and ensure_topics against a fake admin client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from infra import topics
from infra.topics import DAY_MS, TopicSpec, ensure_topics, topic_specs
from tapstream.errors import StackError
from tapstream.settings import TopicSettings


def by_name(specs: list[TopicSpec]) -> dict[str, TopicSpec]:
    return {s.name: s for s in specs}


def test_default_specs_cover_every_topic() -> None:
    specs = by_name(topic_specs(TopicSettings()))
    assert set(specs) == {
        "attendance.raw", "attendance.unmatched", "attendance.dlq", "employees", "devices.status",
        "attendance.live", "alerts",
    }


def test_live_and_alerts_are_single_partition_logs() -> None:
    specs = by_name(topic_specs(TopicSettings(live_retention_days=3)))
    # one partition each: an SSE Last-Event-ID is then one offset per topic
    assert specs["attendance.live"].partitions == specs["alerts"].partitions == 1
    assert specs["attendance.live"].config == {"cleanup.policy": "delete", "retention.ms": str(3 * DAY_MS)}


def test_device_status_keeps_the_latest_per_device() -> None:
    status = by_name(topic_specs(TopicSettings()))["devices.status"]
    assert status.partitions == 1
    assert status.config == {"cleanup.policy": "compact"}


def test_raw_topic_is_the_replay_log() -> None:
    raw = by_name(topic_specs(TopicSettings(raw_partitions=12, raw_retention_days=30)))["attendance.raw"]
    assert raw.partitions == 12
    assert raw.config == {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}
    assert raw.replication_factor == -1  # the cluster's default: 1 locally, 3 on a real cluster


def test_unmatched_and_dlq_follow_raw_partitions_and_keep_long() -> None:
    settings = TopicSettings(raw_partitions=3, raw_retention_days=90, dlq_retention_days=400)
    specs = by_name(topic_specs(settings))
    assert specs["attendance.unmatched"].partitions == 3
    assert specs["attendance.dlq"].partitions == 3
    assert specs["attendance.unmatched"].config["retention.ms"] == str(400 * DAY_MS)
    assert specs["attendance.dlq"].config["retention.ms"] == str(400 * DAY_MS)


def test_employees_is_compacted_single_partition() -> None:
    employees = by_name(topic_specs(TopicSettings(employees="hr.employees")))["hr.employees"]
    assert employees.partitions == 1
    assert employees.config == {"cleanup.policy": "compact"}


@dataclass
class FakeTopicMetadata:
    partitions: dict[int, object]


@dataclass
class FakeClusterMetadata:
    topics: dict[str, FakeTopicMetadata]


class FakeFuture:
    def result(self) -> None:
        return None


@dataclass
class FakeAdmin:
    """Stands in for confluent_kafka's AdminClient: a dict of topic -> partition count."""

    existing: dict[str, int]
    created: list[Any] = field(default_factory=list)

    def __call__(self, config: dict[str, Any]) -> FakeAdmin:
        return self

    def list_topics(self, timeout: float) -> FakeClusterMetadata:
        return FakeClusterMetadata(
            {n: FakeTopicMetadata({i: object() for i in range(p)}) for n, p in self.existing.items()}
        )

    def create_topics(self, new: list[Any], request_timeout: float) -> dict[str, FakeFuture]:
        self.created.extend(new)
        return {t.topic: FakeFuture() for t in new}


def test_ensure_topics_creates_only_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FakeAdmin({"attendance.raw": 6, "__consumer_offsets": 8})
    monkeypatch.setattr(topics, "AdminClient", admin)
    states = ensure_topics("fake:9092", topic_specs(TopicSettings()))
    assert sorted(t.topic for t in admin.created) == [
        "alerts", "attendance.dlq", "attendance.live", "attendance.unmatched", "devices.status", "employees"
    ]
    assert {s.name: s.created for s in states}["attendance.raw"] is False
    assert all(s.created for s in states if s.name != "attendance.raw")


def test_ensure_topics_reports_partition_mismatch_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FakeAdmin({
        "attendance.raw": 3, "attendance.unmatched": 6, "attendance.dlq": 6, "employees": 1, "devices.status": 1,
        "attendance.live": 1, "alerts": 1,
    })
    monkeypatch.setattr(topics, "AdminClient", admin)
    with pytest.raises(StackError, match="attendance.raw has 3 partitions, settings say 6"):
        ensure_topics("fake:9092", topic_specs(TopicSettings()))
    assert admin.created == []
