"""What the worker decides for a batch of raw messages, as plain functions (no Kafka, no Faust).

For each message of ``attendance.raw``, in order:

1. decode it into a RawPunch — or quarantine the bytes (``undecodable_event``);
2. drop it if its event id was already seen (earlier in the batch, or in the dedup table);
3. look its user code up in the employee map — a known code becomes an EnrichedPunch for the
   sinks, an unknown or inactive one is parked for ``attendance.unmatched``.

Nothing is dropped without a count: ``BatchPlan`` accounts for every message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.codec import decode
from schemas.employee import EmployeeRecord
from schemas.punch import EnrichedPunch, RawPunch
from schemas.quarantine import QuarantineRecord, Reason, Stage, quarantine
from tapstream.errors import ContractError


@dataclass(frozen=True)
class Incoming:
    """One Kafka message as the worker received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Unmatched:
    """A valid punch whose user code has no active employee: parked, with the reason why."""

    msg: Incoming
    punch: RawPunch
    reason: str  # "unknown_employee" or "inactive_employee"


@dataclass
class BatchPlan:
    """Where every message of a batch goes."""

    to_write: list[EnrichedPunch] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    duplicates: int = 0

    @property
    def accounted(self) -> int:
        return len(self.to_write) + len(self.unmatched) + len(self.quarantined) + self.duplicates

    def seen_ids(self) -> list[uuid.UUID]:
        """Ids to remember once the batch is safely written (written and parked punches)."""
        return [r.punch.event_id for r in self.to_write] + [u.punch.event_id for u in self.unmatched]


def decode_incoming(msg: Incoming) -> RawPunch | QuarantineRecord:
    """Decode a raw-topic message, or turn it into a quarantine record saying why not."""
    if msg.value is None:
        return _stream_quarantine(msg, Reason.UNDECODABLE_EVENT, "empty message (null value)")
    try:
        return decode(RawPunch, msg.value)
    except ContractError as exc:
        return _stream_quarantine(msg, Reason(exc.reason), exc.detail)


def _stream_quarantine(msg: Incoming, reason: Reason, detail: str) -> QuarantineRecord:
    serial = msg.key.decode("utf-8", "replace") if msg.key else None
    return quarantine(
        reason,
        detail,
        Stage.STREAM,
        msg.value or b"",
        device_serial=serial,
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
    )


def plan_batch(
    batch: Sequence[Incoming],
    already_seen: Callable[[Incoming, uuid.UUID], bool],
    employee_of: Callable[[str], EmployeeRecord | None],
) -> BatchPlan:
    """Decide, for each message in order, whether to write, park, quarantine or drop it."""
    plan = BatchPlan()
    in_batch: set[uuid.UUID] = set()
    for msg in batch:
        decoded = decode_incoming(msg)
        if isinstance(decoded, QuarantineRecord):
            plan.quarantined.append(decoded)
            continue
        if decoded.event_id in in_batch or already_seen(msg, decoded.event_id):
            plan.duplicates += 1
            continue
        in_batch.add(decoded.event_id)
        employee = employee_of(decoded.user_code)
        if employee is None or not employee.active:
            reason = "unknown_employee" if employee is None else "inactive_employee"
            plan.unmatched.append(Unmatched(msg, decoded, reason))
            continue
        plan.to_write.append(
            EnrichedPunch(
                punch=decoded,
                employee_id=employee.employee_id,
                source_partition=msg.partition,
                source_offset=msg.offset,
            )
        )
    return plan
