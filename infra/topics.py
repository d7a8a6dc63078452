"""Tapstream's topics: what they are (a pure function of TopicSettings) and making them exist.

    attendance.raw        every punch as read, keyed by device serial; the replay log
    attendance.unmatched  punches whose user code no employee has (yet); re-matched later
    attendance.dlq        records a sink or decoder rejected, with the reason and origin
    employees             HR's employee list, latest record per attendance code (compacted)
    devices.status        each pull device's latest status, keyed by serial (compacted)
    attendance.live       every recorded punch, as the live feed shows it, keyed by device serial
    alerts                alert incidents opening and resolving, keyed by kind:subject

Partition counts are never changed here: stream tables are partitioned like the raw topic,
so a different count on an existing topic is reported, not "fixed".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin without __all__: mypy wants the origin

from tapstream.errors import StackError
from tapstream.settings import TopicSettings

logger = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TopicSpec:
    """A topic as Tapstream needs it. replication_factor -1 = the cluster's default."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication_factor: int = -1


@dataclass(frozen=True)
class TopicState:
    """An existing topic after ensure_topics: its partitions and whether this call created it."""

    name: str
    partitions: int
    created: bool


def _retention(days: int, policy: str = "delete") -> dict[str, str]:
    return {"cleanup.policy": policy, "retention.ms": str(days * DAY_MS)}


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """The topics Tapstream runs on."""
    long_days = max(topics.raw_retention_days, topics.dlq_retention_days)
    return [
        TopicSpec(topics.raw, topics.raw_partitions, _retention(topics.raw_retention_days)),
        # Same partitions and keys as raw, so a re-match keeps each device's order. Kept as long
        # as dead letters: a punch waits here until HR enrols the code, which can take months.
        TopicSpec(topics.unmatched, topics.raw_partitions, _retention(long_days)),
        # Same partitions as raw too: a misbehaving device can flood it, and replaying it into
        # raw keeps the per-device order.
        TopicSpec(topics.dlq, topics.raw_partitions, _retention(topics.dlq_retention_days)),
        # A few thousand keyed records read whole by every worker (a global table): one partition
        # gives one total order of HR updates and nothing is lost in parallelism. Compaction
        # keeps the latest record per code forever; tombstones delete leavers.
        TopicSpec(topics.employees, topics.employees_partitions, {"cleanup.policy": "compact"}),
        # The latest status per device is all a monitor needs: compacted, one partition so a
        # reader sees every device's updates in the order they were published.
        TopicSpec(topics.device_status, 1, {"cleanup.policy": "compact"}),
        # One partition: the live feed is a few hundred events a second at most, and one total
        # order makes an SSE Last-Event-ID a single offset.
        TopicSpec(topics.live, 1, _retention(topics.live_retention_days)),
        TopicSpec(topics.alerts, 1, _retention(topics.alerts_retention_days)),
    ]


def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[TopicState]:
    """Create the missing topics; StackError if an existing one has another partition count."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    existing = _partition_counts(admin)
    missing = [s for s in specs if s.name not in existing]
    if missing:
        _create(admin, missing)
    mismatches = [
        f"{s.name} has {existing[s.name]} partitions, settings say {s.partitions}"
        for s in specs
        if s.name in existing and existing[s.name] != s.partitions
    ]
    if mismatches:
        raise StackError(
            "topic partition counts differ from the settings: " + "; ".join(mismatches)
            + ". Partition counts are fixed for the life of a deployment (stream tables are "
            "partitioned like the raw topic): correct TAPSTREAM_TOPICS__*_PARTITIONS, or recreate "
            "the topics (`tapstream stack down --wipe` for the local stack)"
        )
    created = {s.name for s in missing}
    return [TopicState(s.name, existing.get(s.name, s.partitions), s.name in created) for s in specs]


def list_topics(bootstrap: str, timeout_s: float = 5.0) -> dict[str, int]:
    """Partition count of every non-internal topic on the cluster."""
    return _partition_counts(AdminClient({"bootstrap.servers": bootstrap, "log_level": 3}), timeout_s)


def _partition_counts(admin: AdminClient, timeout_s: float = TIMEOUT_S) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as err:
        raise StackError(f"Kafka did not answer a metadata request: {err}") from err
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not name.startswith("__")}


def _create(admin: AdminClient, specs: list[TopicSpec]) -> None:
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                    config=dict(s.config)) for s in specs]
    for name, future in admin.create_topics(new, request_timeout=TIMEOUT_S).items():
        try:
            future.result()
        except KafkaException as err:
            if err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created meanwhile by a concurrent `stack up`
            raise StackError(f"cannot create topic {name}: {err.args[0].str()}") from err
        logger.info("created topic %s", name)
