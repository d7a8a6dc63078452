"""What the worker decides for a batch of raw messages, as plain functions (no Kafka, no Faust).

For each message of ``attendance.raw``, in order:

1. decode it into a RawPunch — or quarantine the bytes (``undecodable_event``); quarantine a
   punch whose time cannot be true (before ``validation.earliest_punch``, a device clock reset
   to 2000; or further after its receipt than ``validation.max_future_s``) or whose state is not
   one the devices may report (``implausible_time``, ``unknown_state``);
2. drop it if its event id was already seen (earlier in the batch, or in the dedup table, unless
   the rematcher re-sent it: see ``REMATCH_HEADER``);
3. look its user code up in the employee map — a known code becomes an EnrichedPunch for the
   sinks, an unknown or inactive one is parked for ``attendance.unmatched``.

Nothing is dropped without a count: ``BatchPlan`` accounts for every message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from schemas.codec import decode
from schemas.employee import EmployeeRecord
from schemas.punch import EnrichedPunch, RawPunch
from schemas.quarantine import QuarantineRecord, Reason, Stage, quarantine
from tapstream.errors import ContractError
from tapstream.settings import ValidationSettings

# Marks the rematcher's re-send of a parked punch, whose code is now mapped. The dedup table
# remembers parked ids (so a device's re-send of one is dropped, not parked twice); this header
# is what lets the deliberate re-send through.
REMATCH_HEADER = "tapstream-rematch"
Headers = Mapping[str, object] | Iterable[tuple[str, object]] | None  # values unread


@dataclass(frozen=True)
class Incoming:
    """One Kafka message as the worker received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    rematch: bool = False  # re-sent by the rematcher: not checked against the dedup table


def is_rematch(headers: Headers) -> bool:
    """Whether a message's headers (a mapping, or Kafka's list of pairs) carry REMATCH_HEADER."""
    if not headers:
        return False
    names = headers.keys() if isinstance(headers, Mapping) else (name for name, _ in headers)
    return REMATCH_HEADER in names


@dataclass(frozen=True)
class Seen:
    """An event id for the dedup table, with where it was first seen."""

    partition: int
    offset: int
    event_id: uuid.UUID


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


def to_remember(plan: BatchPlan, stored: Sequence[EnrichedPunch]) -> list[Seen]:
    """The ids a dedup table keeps once a batch is safe: the punches every sink stored and the
    parked ones, so that a device's re-send of either is a duplicate. Not a punch a sink
    rejected: it comes back from quarantine after a fix and must pass."""
    seen = [Seen(row.source_partition, row.source_offset, row.punch.event_id) for row in stored]
    seen += [Seen(u.msg.partition, u.msg.offset, u.punch.event_id) for u in plan.unmatched]
    return seen


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


def implausible(punch: RawPunch, rules: ValidationSettings) -> tuple[Reason, str] | None:
    """Why a well-formed punch still cannot be accepted, or None."""
    earliest = datetime.combine(rules.earliest_punch, time(0), UTC)
    if punch.punch_time < earliest:
        when = f"{punch.punch_time:%Y-%m-%d %H:%M:%S}Z"
        return Reason.IMPLAUSIBLE_TIME, f"punch time {when} is before {earliest:%Y-%m-%d} (device clock reset?)"
    ahead = (punch.punch_time - punch.received_at).total_seconds()
    if ahead > rules.max_future_s:
        return Reason.IMPLAUSIBLE_TIME, f"punch time is {ahead:.0f} s after it was received (device clock ahead?)"
    if punch.punch_state not in rules.punch_states:
        return Reason.UNKNOWN_STATE, f"punch state {punch.punch_state} is not one of {rules.punch_states}"
    return None


def plan_batch(
    batch: Sequence[Incoming],
    already_seen: Callable[[Incoming, uuid.UUID], bool],
    employee_of: Callable[[str], EmployeeRecord | None],
    rules: ValidationSettings | None = None,
) -> BatchPlan:
    """Decide, for each message in order, whether to write, park, quarantine or drop it."""
    rules = rules or ValidationSettings()
    plan = BatchPlan()
    in_batch: set[uuid.UUID] = set()
    for msg in batch:
        decoded = decode_incoming(msg)
        if isinstance(decoded, QuarantineRecord):
            plan.quarantined.append(decoded)
            continue
        problem = implausible(decoded, rules)
        if problem is not None:
            plan.quarantined.append(_stream_quarantine(msg, *problem))
            continue
        if decoded.event_id in in_batch or (not msg.rematch and already_seen(msg, decoded.event_id)):
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
