"""Operate the quarantine: list the dead letters kept in Postgres, replay those whose cause is fixed.

The ``quarantine`` table (migration 0004, written by the worker's ledger through
sinks/postgres_quarantine.py) is read with one ``Selection`` of filters. A replay turns each
selected record's original bytes back into raw punches the way its stage would today
(infra/quarantine_revive.py), sends them to ``attendance.raw`` with the header
``tapstream-replayed-from: dlq:<partition>:<offset>``, waits for Kafka to confirm every one,
and only then stamps the row ``replayed_at``. A record that still cannot become a valid punch
is not sent and stays un-replayed, reported with the reason.

Rows are locked (``FOR UPDATE SKIP LOCKED``) for the length of their chunk's send, so two
replays at once never send the same record twice; replaying twice is harmless anyway (event ids
are deterministic and every sink is idempotent).
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import psycopg
from confluent_kafka import KafkaException, Producer
from psycopg import sql

from infra.quarantine_revive import Refused, revive
from producers.publisher import producer_config
from producers.registry import DeviceInfo, postgres_loader
from schemas.quarantine import Reason, Stage
from sinks.postgres_quarantine import QuarantineRowValues
from tapstream.errors import TapstreamError, first_line
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

REPLAY_HEADER = "tapstream-replayed-from"
CHUNK = 200  # records per lock-send-mark transaction
Progress = Callable[[int, int], None]
Status = Literal["sent", "would_send", "skipped", "failed"]

COLUMNS = (
    "dlq_partition", "dlq_offset", "reason", "detail", "stage", "device_serial", "original", "original_size",
    "source_topic", "source_partition", "source_offset", "quarantined_at", "replayed_at", "replay_note",
    "ingested_at",
)
_COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
_OLDEST_FIRST = sql.SQL("ORDER BY quarantined_at, dlq_partition, dlq_offset")
_NEWEST_FIRST = sql.SQL("ORDER BY quarantined_at DESC, dlq_partition DESC, dlq_offset DESC")
_IDS = sql.SQL("(dlq_partition, dlq_offset) IN (SELECT * FROM unnest({}::integer[], {}::bigint[]))")
_MARK = """
UPDATE quarantine q SET replayed_at = now(), replay_note = u.note
FROM unnest(%s::integer[], %s::bigint[], %s::text[]) AS u(p, o, note)
WHERE q.dlq_partition = u.p AND q.dlq_offset = u.o
"""
_AGE = re.compile(r"(\d+)\s*([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class QuarantineError(TapstreamError):
    """A quarantine listing or replay cannot run: bad selection, Postgres or Kafka unavailable."""


@dataclass(frozen=True)
class QuarantineRow(QuarantineRowValues):
    """One row of the ``quarantine`` table: what the ledger wrote, and what a replay added."""

    replayed_at: datetime | None
    replay_note: str | None
    ingested_at: datetime

    @property
    def id(self) -> str:
        """``partition:offset`` of the attendance.dlq message: how operators name a record."""
        return f"{self.dlq_partition}:{self.dlq_offset}"


@dataclass(frozen=True)
class Selection:
    """Which quarantine rows to list or replay; every given filter must hold.

    ``since``/``until`` bound quarantined_at (inclusive, exclusive); ``limit`` None = all;
    ``ids`` (partition, offset) pairs — with ids, already replayed rows are selected too and a
    replay reports them (sending them again needs ``include_replayed``).
    """

    reason: str | None = None
    device: str | None = None
    stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_replayed: bool = False
    limit: int | None = 50
    ids: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class OutMessage:
    """One message for the raw topic."""

    key: bytes
    value: bytes
    headers: dict[str, bytes]


class Sender(Protocol):
    """Sends to a topic and returns, per message, its delivery error or None (a test passes a fake)."""

    def send(self, topic: str, messages: Sequence[OutMessage]) -> list[str | None]: ...


class KafkaSender:
    """The idempotent producer the push and pull publishers use; ``send`` waits for every report.

    ``timeout_s`` bounds each message (librdkafka's message.timeout.ms), so a broker outage
    comes back as failed messages rather than a hang.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        config = producer_config(settings, message_timeout_ms=int(timeout_s * 1000), client_id="tapstream-replay")
        self._producer = Producer(config)
        self._timeout_s = timeout_s

    def send(self, topic: str, messages: Sequence[OutMessage]) -> list[str | None]:
        results: list[str | None] = ["no delivery report"] * len(messages)
        for index, message in enumerate(messages):
            report = functools.partial(_delivered, results, index)
            headers: dict[str, str | bytes | None] = dict(message.headers)
            while True:
                try:
                    self._producer.produce(topic, message.value, message.key, headers=headers, on_delivery=report)
                    break
                except BufferError:
                    self._producer.poll(0.05)  # librdkafka's queue is full: let it drain
                except KafkaException as exc:  # e.g. larger than the broker accepts
                    results[index] = str(exc)
                    break
            self._producer.poll(0)
        self._producer.flush(self._timeout_s + 5.0)
        return results


def _delivered(results: list[str | None], index: int, error: Any, _message: Any) -> None:
    text = getattr(error, "str", None)
    results[index] = None if error is None else str(text() if callable(text) else error)


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did with one record."""

    id: str
    reason: str
    device_serial: str | None
    status: Status
    punches: int
    note: str


@dataclass
class ReplayReport:
    """Every selected record's outcome; ``stopped`` when Kafka failed and later chunks were not tried."""

    outcomes: list[ReplayOutcome] = field(default_factory=list)
    stopped: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def parse_id(text: str) -> tuple[int, int]:
    """``"3:1200"`` -> (3, 1200): a record's attendance.dlq partition and offset."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit() or int(partition) >= 2**31 or int(offset) >= 2**63:
        raise QuarantineError(f"id {text!r} is not PARTITION:OFFSET (e.g. 0:1234, as `quarantine list` shows)")
    return int(partition), int(offset)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (no offset = UTC) or an age such as 30m, 6h, 2d, 1w (that long before now)."""
    age = _AGE.fullmatch(text.strip())
    if age is not None:
        return (now or datetime.now(UTC)) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise QuarantineError(
            f"{text!r} is not a time: ISO 8601 (2026-11-01, 2026-11-01T06:00+06:00; no offset = UTC) "
            "or an age (30m, 6h, 2d)"
        ) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def check_selection(selection: Selection) -> None:
    """Refuse filters that can only match nothing because of a typo (unknown reason or stage)."""
    if selection.reason is not None and selection.reason not in {r.value for r in Reason}:
        raise QuarantineError(f"unknown reason {selection.reason!r}; one of: {', '.join(r.value for r in Reason)}")
    if selection.stage is not None and selection.stage not in {s.value for s in Stage}:
        raise QuarantineError(f"unknown stage {selection.stage!r}; one of: {', '.join(s.value for s in Stage)}")
    if selection.limit is not None and selection.limit < 1:
        raise QuarantineError(f"limit {selection.limit} must be at least 1")


def selection_query(
    selection: Selection, *, columns: sql.Composable = _COLS, newest_first: bool = True
) -> tuple[sql.Composed, list[Any]]:
    """The SELECT for a selection and its parameters."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value, op in (
        ("reason", selection.reason, "="), ("device_serial", selection.device, "="), ("stage", selection.stage, "="),
        ("quarantined_at", selection.since, ">="), ("quarantined_at", selection.until, "<"),
    ):
        if value is not None:
            where.append(sql.SQL("{} {} %s").format(sql.Identifier(column), sql.SQL(op)))
            params.append(value)
    if selection.ids:
        where.append(_IDS.format(sql.Placeholder(), sql.Placeholder()))
        params += [[p for p, _ in selection.ids], [o for _, o in selection.ids]]
    elif not selection.include_replayed:
        where.append(sql.SQL("replayed_at IS NULL"))
    query = sql.SQL("SELECT {} FROM quarantine").format(columns)
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    query += sql.SQL(" ") + (_NEWEST_FIRST if newest_first else _OLDEST_FIRST)
    if selection.limit is not None:
        query += sql.SQL(" LIMIT {}").format(sql.Literal(selection.limit))
    return query, params


def list_rows(conn: psycopg.Connection[Any], selection: Selection) -> list[QuarantineRow]:
    """The rows of a selection, newest first."""
    check_selection(selection)
    query, params = selection_query(selection)
    return [_row(values) for values in conn.execute(query, params)]


def list_quarantine(dsn: str, selection: Selection) -> list[QuarantineRow]:
    """Connect to ``dsn`` and list a selection, newest first."""
    with connect(dsn) as conn:
        return list_rows(conn, selection)


def row_dict(row: QuarantineRow) -> dict[str, Any]:
    """Every column of a row for JSON or CSV: ``id`` first, times in ISO 8601, original as base64."""
    out: dict[str, Any] = {"id": row.id, **asdict(row)}
    out["original"] = base64.b64encode(row.original).decode("ascii")
    for name in ("quarantined_at", "replayed_at", "ingested_at"):
        out[name] = out[name].isoformat() if out[name] is not None else None
    return out


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (each replay chunk is its own transaction), errors made clear."""
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            yield conn
    except psycopg.errors.UndefinedTable as exc:
        raise QuarantineError(f"{first_line(exc)}: run `tapstream stack up` to apply migrations") from exc
    except psycopg.OperationalError as exc:
        raise QuarantineError(f"cannot reach PostgreSQL ({first_line(exc)}); is `tapstream stack up` running?") from exc
    except psycopg.Error as exc:
        raise QuarantineError(f"PostgreSQL: {first_line(exc)}") from exc


def replay(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    sender: Sender | None = None,
) -> ReplayReport:
    """Re-send a selection (oldest first) to the raw topic; see the module docstring."""
    check_selection(selection)
    dsn = settings.postgres.effective_dsn()
    devices = _devices(dsn)
    report = ReplayReport()
    with connect(dsn) as conn:
        keys = _selected_keys(conn, selection)
        selected = set(keys)
        report.outcomes += [_skipped_id(key, "no quarantine record with this id matches") for key in selection.ids
                            if key not in selected]
        sending = None if dry_run else sender or KafkaSender(settings)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            with conn.transaction():
                outcomes = _replay_chunk(conn, chunk, selection, devices, settings, sending)
            report.outcomes += outcomes
            if progress is not None:
                progress(start + len(chunk), len(keys))
            if any(o.status == "failed" for o in outcomes):
                report.stopped = start + CHUNK < len(keys)
                break
    logger.info(
        "quarantine replay: %d sent, %d would be sent, %d skipped, %d failed",
        report.count("sent"), report.count("would_send"), report.count("skipped"), report.count("failed"),
    )
    return report


def _devices(dsn: str) -> Mapping[str, DeviceInfo]:
    try:
        return {device.serial: device for device in postgres_loader(dsn)()}
    except psycopg.Error as exc:
        raise QuarantineError(f"cannot read the device registry ({first_line(exc)})") from exc


def _selected_keys(conn: psycopg.Connection[Any], selection: Selection) -> list[tuple[int, int]]:
    columns = sql.SQL("dlq_partition, dlq_offset")
    query, params = selection_query(selection, columns=columns, newest_first=False)
    return [(int(p), int(o)) for p, o in conn.execute(query, params)]


_Pending = tuple[QuarantineRow, list[OutMessage], str]  # a row, its messages, its replay note


def _replay_chunk(
    conn: psycopg.Connection[Any],
    keys: Sequence[tuple[int, int]],
    selection: Selection,
    devices: Mapping[str, DeviceInfo],
    settings: Settings,
    sender: Sender | None,
) -> list[ReplayOutcome]:
    """Lock, revive, send and mark one chunk (``sender`` None: a dry run, nothing locked or sent)."""
    rows = _lock(conn, keys, locking=sender is not None)
    found = {(r.dlq_partition, r.dlq_offset) for r in rows}
    outcomes = [_skipped_id(key, "being replayed by another run") for key in keys if key not in found]
    to_send: list[_Pending] = []
    for row in rows:
        if row.replayed_at is not None and not selection.include_replayed:
            when = row.replayed_at.astimezone(UTC)
            outcomes.append(_outcome(row, "skipped", 0, f"already replayed {when:%Y-%m-%d %H:%M}Z; --all sends it again"))
            continue
        revived = revive(row, devices, settings)
        if isinstance(revived, Refused):
            outcomes.append(_outcome(row, "skipped", 0, revived.why))
            continue
        headers = {REPLAY_HEADER: f"dlq:{row.id}".encode()}
        messages = [OutMessage(key, value, headers) for key, value in revived.messages]
        note = _note(len(messages), settings.topics.raw, revived.note)
        if sender is None:
            outcomes.append(_outcome(row, "would_send", len(messages), note.replace("sent", "would send", 1)))
        else:
            to_send.append((row, messages, note))
    if sender is not None and to_send:
        outcomes += _send_and_mark(conn, sender, settings.topics.raw, to_send)
    order = {f"{p}:{o}": index for index, (p, o) in enumerate(keys)}
    return sorted(outcomes, key=lambda outcome: order[outcome.id])


def _lock(conn: psycopg.Connection[Any], keys: Sequence[tuple[int, int]], *, locking: bool) -> list[QuarantineRow]:
    query = sql.SQL("SELECT {} FROM quarantine WHERE {} {}").format(
        _COLS, _IDS.format(sql.Placeholder(), sql.Placeholder()), _OLDEST_FIRST
    )
    if locking:
        query += sql.SQL(" FOR UPDATE SKIP LOCKED")
    params = [[p for p, _ in keys], [o for _, o in keys]]
    return [_row(values) for values in conn.execute(query, params)]


def _send_and_mark(
    conn: psycopg.Connection[Any], sender: Sender, topic: str, to_send: Sequence[_Pending]
) -> list[ReplayOutcome]:
    """Send every message; mark the rows whose messages Kafka all confirmed."""
    errors = sender.send(topic, [m for _, messages, _ in to_send for m in messages])
    outcomes: list[ReplayOutcome] = []
    marked: list[tuple[QuarantineRow, str]] = []
    position = 0
    for row, messages, note in to_send:
        failed = [e for e in errors[position : position + len(messages)] if e is not None]
        position += len(messages)
        if failed:
            outcomes.append(_outcome(row, "failed", len(messages), f"not confirmed by Kafka: {failed[0]}"))
        else:
            outcomes.append(_outcome(row, "sent", len(messages), note))
            marked.append((row, note))
    if marked:
        columns = [[r.dlq_partition for r, _ in marked], [r.dlq_offset for r, _ in marked], [n for _, n in marked]]
        conn.execute(_MARK, columns)
    return outcomes


def _note(punches: int, topic: str, extra: str) -> str:
    note = f"sent {punches} punch{'es' if punches != 1 else ''} to {topic}"
    return f"{note}; {extra}" if extra else note


def _outcome(row: QuarantineRow, status: Status, punches: int, note: str) -> ReplayOutcome:
    return ReplayOutcome(row.id, row.reason, row.device_serial, status, punches, note)


def _skipped_id(key: tuple[int, int], why: str) -> ReplayOutcome:
    return ReplayOutcome(f"{key[0]}:{key[1]}", "", None, "skipped", 0, why)


def _row(values: Sequence[Any]) -> QuarantineRow:
    return QuarantineRow(*values)
