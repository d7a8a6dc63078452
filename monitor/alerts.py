"""Alert conditions and the incident engine: pure logic, no Kafka, no clock of its own.

``evaluate`` turns what the pipeline reports (a ``PipelineStatus``, the latest ``DeviceStatus``
per pull device, the last activity of push devices) into one ``Condition`` per subject;
``AlertEngine.step`` turns a sequence of those evaluations into ``Alert`` events:

* an incident **fires once** when its condition holds — after its grace time (``grace_s``,
  measured from when the condition began if the probe knows, else from the engine's first sight);
* nothing is re-sent while it lasts;
* it **resolves once**, after its condition has been clear for ``resolve_after`` evaluations in
  a row (2 by default): one clear reading between two bad ones is a flap, not a resolution;
* a condition that could not be read (``holds is None``) neither fires, resolves, nor counts;
* a subject no longer reported (a removed device, a sink no longer configured) is clear, unless
  its kind is ``unread`` in that evaluation (its source could not be listed at all);
* ``restore`` rebuilds the open incidents from the alerts already published (the last event per
  key is ``firing``), so a restarted monitor neither re-fires nor forgets to resolve.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from infra.pipeline_status import PipelineStatus
from schemas.alert import Alert, AlertKind, AlertState, Severity
from schemas.device_status import DeviceStatus, LinkState
from tapstream.settings import AlertSettings

DEVICE_KINDS = frozenset({AlertKind.DEVICE_OFFLINE, AlertKind.CLOCK_DRIFT, AlertKind.DEVICE_LOG_FULL})


@dataclass(frozen=True)
class Condition:
    """One subject's condition at one evaluation (``holds`` None = could not be read)."""

    kind: AlertKind
    subject: str
    holds: bool | None
    message: str = ""
    value: float | None = None
    threshold: float | None = None
    severity: Severity = Severity.WARNING
    since: datetime | None = None  # when the condition began, if the probe knows
    grace_s: float = 0.0  # it must have held this long before the incident fires, seconds

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}"


@dataclass(frozen=True)
class Evaluation:
    """Every condition read at ``at``; ``unread``: kinds whose subjects could not be listed."""

    at: datetime
    conditions: list[Condition]
    unread: frozenset[AlertKind] = frozenset()


# --- conditions -------------------------------------------------------------------------------


def evaluate(
    limits: AlertSettings,
    now: datetime,
    status: PipelineStatus | None,
    device_statuses: Mapping[str, DeviceStatus] | None,
    push_last_seen: Mapping[str, datetime] | None,
    sinks: Sequence[str] = (),
) -> Evaluation:
    """Every condition at ``now``; a source given as None could not be read."""
    conditions: list[Condition] = []
    unread: set[AlertKind] = set()
    if device_statuses is None:
        unread |= DEVICE_KINDS
    else:
        for device in device_statuses.values():
            conditions += device_conditions(device, limits, now)
    if push_last_seen is None:
        unread.add(AlertKind.DEVICE_OFFLINE)
    else:
        pulled = set(device_statuses or ())
        conditions += [push_offline(serial, seen, limits, now)
                       for serial, seen in push_last_seen.items() if serial not in pulled]
    if status is None:
        unread |= {AlertKind.SPOOL_BACKLOG, AlertKind.CONSUMER_LAG, AlertKind.SINK_FAILING}
    else:
        conditions += pipeline_conditions(status, limits, sinks)
    return Evaluation(now, conditions, frozenset(unread))


def device_conditions(device: DeviceStatus, limits: AlertSettings, now: datetime) -> list[Condition]:
    """Offline, clock drift and log memory of one pull device; a stopped device is not watched."""
    serial = device.device_serial
    if device.state is LinkState.STOPPED:  # disabled, removed, or its producer stopped on purpose
        return [Condition(kind, serial, False, f"device {serial} no longer watched (stopped)")
                for kind in sorted(DEVICE_KINDS)]
    return [pull_offline(device, limits, now), clock_drift(device, limits), log_memory(device, limits)]


def pull_offline(device: DeviceStatus, limits: AlertSettings, now: datetime) -> Condition:
    """Not seen for more than ``device_offline_s``.

    A connected status vouches for the device until it was reported: live capture only moves
    ``last_seen`` when a punch arrives. A status that stops coming (its producer died) ages out.
    """
    serial, limit = device.device_serial, limits.device_offline_s
    seen = [t for t in (device.last_seen, device.reported_at if device.connected else None) if t is not None]
    if not seen:  # never reached since its producer started: offline from its first failure
        since = device.failing_since
        return Condition(AlertKind.DEVICE_OFFLINE, serial, True, f"device {serial} never reached",
                         None, limit, since=since, grace_s=limit)
    contact = max(seen)
    age = (now - contact).total_seconds()
    return Condition(AlertKind.DEVICE_OFFLINE, serial, age > limit,
                     f"device {serial} last seen {_duration(age)} ago (limit {_duration(limit)})",
                     round(age, 1), limit, since=contact)


def push_offline(serial: str, last_seen: datetime, limits: AlertSettings, now: datetime) -> Condition:
    """A push device that has not called the endpoint for more than ``device_offline_s``."""
    limit = limits.device_offline_s
    age = (now - last_seen).total_seconds()
    return Condition(AlertKind.DEVICE_OFFLINE, serial, age > limit,
                     f"push device {serial} last seen {_duration(age)} ago (limit {_duration(limit)})",
                     round(age, 1), limit, since=last_seen)


def clock_drift(device: DeviceStatus, limits: AlertSettings) -> Condition:
    """Device clock more than ``clock_drift_s`` off true time, either way (unknown until measured)."""
    serial, offset, limit = device.device_serial, device.clock_offset_s, limits.clock_drift_s
    if offset is None:
        return Condition(AlertKind.CLOCK_DRIFT, serial, None)
    return Condition(AlertKind.CLOCK_DRIFT, serial, abs(offset) > limit,
                     f"device {serial} clock {offset:+.0f}s off (limit ±{limit:.0f}s)", offset, limit)


def log_memory(device: DeviceStatus, limits: AlertSettings) -> Condition:
    """Attendance log fuller than ``log_memory_pct`` of its capacity; critical when full."""
    serial, records, capacity = device.device_serial, device.records, device.records_capacity
    if records is None or not capacity:
        return Condition(AlertKind.DEVICE_LOG_FULL, serial, None)
    pct = 100.0 * records / capacity
    return Condition(AlertKind.DEVICE_LOG_FULL, serial, pct > limits.log_memory_pct,
                     f"device {serial} log {pct:.1f}% full ({records:,}/{capacity:,} records, "
                     f"limit {limits.log_memory_pct:g}%)", round(pct, 1), limits.log_memory_pct,
                     Severity.CRITICAL if records >= capacity else Severity.WARNING)


def pipeline_conditions(status: PipelineStatus, limits: AlertSettings, sinks: Sequence[str]) -> list[Condition]:
    """Spool backlog per spool, the worker group's lag, and each sink."""
    conditions = [spool_backlog(spool.name, spool.present, spool.depth, spool.oldest_age_s, spool.unknown, limits)
                  for spool in status.spools]
    lag = status.lag
    lag_holds = None if lag.lag is None else lag.lag > limits.consumer_lag
    conditions.append(Condition(AlertKind.CONSUMER_LAG, lag.group, lag_holds,
                                f"group {lag.group} is {lag.lag or 0:,} messages behind on {lag.topic} "
                                f"(limit {limits.consumer_lag:,})", lag.lag, limits.consumer_lag))
    worker = status.worker
    # A stopped worker's failures are those of its last run: not a reading of now.
    known = worker.unknown is None and worker.running
    for sink in sorted(set(sinks) | set(worker.failing)):
        error = worker.failing.get(sink)
        conditions.append(Condition(
            AlertKind.SINK_FAILING, sink, (error is not None) if known else None,
            f"sink {sink} failing: {error}" if error else f"sink {sink} writing",
            None, limits.sink_failing_s, Severity.CRITICAL, grace_s=limits.sink_failing_s,
        ))
    return conditions


def spool_backlog(name: str, present: bool, depth: int, oldest_age_s: float | None, unknown: str | None,
                  limits: AlertSettings) -> Condition:
    """More than ``spool_backlog_rows`` rows waiting, or the oldest older than ``spool_backlog_age_s``."""
    if unknown is not None:
        return Condition(AlertKind.SPOOL_BACKLOG, name, None)
    age = (oldest_age_s or 0.0) if present and depth else 0.0
    rows_over, age_over = depth > limits.spool_backlog_rows, age > limits.spool_backlog_age_s
    value, threshold = (float(depth), float(limits.spool_backlog_rows)) if rows_over or not age_over \
        else (round(age, 1), limits.spool_backlog_age_s)
    return Condition(AlertKind.SPOOL_BACKLOG, name, rows_over or age_over,
                     f"{name} spool: {depth:,} rows waiting, oldest {_duration(age)} "
                     f"(limits {limits.spool_backlog_rows:,} rows, {_duration(limits.spool_backlog_age_s)})",
                     value, threshold)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m"


# --- the engine -------------------------------------------------------------------------------


@dataclass
class _Track:
    """What the engine remembers of one key: the streak start and the open incident."""

    first_seen: datetime | None = None
    open: Alert | None = None
    clear_streak: int = 0


@dataclass
class AlertEngine:
    """Incidents across evaluations: fire once, resolve once (module docstring)."""

    resolve_after: int = 2
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def restore(self, published: Iterable[Alert]) -> None:
        """Reopen the incidents whose last published event is ``firing``."""
        for alert in open_incidents(published):
            self._tracks[alert.key] = _Track(first_seen=alert.started_at, open=alert)

    def open_alerts(self) -> list[Alert]:
        """The firing event of every open incident, oldest first."""
        return sorted((t.open for t in self._tracks.values() if t.open), key=lambda a: (a.started_at, a.key))

    def step(self, evaluation: Evaluation) -> list[Alert]:
        """The alerts this evaluation raises (firings and resolutions), in key order."""
        current = {c.key: c for c in evaluation.conditions}
        events = []
        for key in sorted(current.keys() | self._tracks.keys()):
            condition = current.get(key) or self._gone(key, evaluation.unread)
            if condition is not None and condition.holds is not None:
                event = self._advance(key, condition, evaluation.at)
                if event is not None:
                    events.append(event)
        return events

    def _gone(self, key: str, unread: frozenset[AlertKind]) -> Condition | None:
        track = self._tracks[key]
        kind, subject = _split_key(key, track)
        if kind in unread:
            return None
        return Condition(kind, subject, False, f"{kind.value} {subject} no longer reported")

    def _advance(self, key: str, condition: Condition, now: datetime) -> Alert | None:
        track = self._tracks.setdefault(key, _Track())
        if not condition.holds:
            track.clear_streak += 1
            if track.open is None or track.clear_streak >= self.resolve_after:
                del self._tracks[key]
                return None if track.open is None else _resolution(track.open, condition, now)
            return None
        track.clear_streak = 0
        track.first_seen = track.first_seen or now
        started = condition.since or track.first_seen
        if track.open is None and now - started >= timedelta(seconds=condition.grace_s):
            track.open = _firing(condition, started, now)
            return track.open
        return None


def _split_key(key: str, track: _Track) -> tuple[AlertKind, str]:
    if track.open is not None:
        return track.open.kind, track.open.subject
    kind, _, subject = key.partition(":")
    return AlertKind(kind), subject


def _firing(condition: Condition, started: datetime, now: datetime) -> Alert:
    return Alert(
        alert_id=uuid.uuid4().hex, kind=condition.kind, subject=condition.subject, state=AlertState.FIRING,
        severity=condition.severity, message=condition.message, value=condition.value,
        threshold=condition.threshold, started_at=_utc(started), at=_utc(now),
    )


def _resolution(firing: Alert, condition: Condition, now: datetime) -> Alert:
    return firing.model_copy(update={
        "state": AlertState.RESOLVED, "message": f"resolved: {condition.message}",
        "value": condition.value, "at": _utc(now),
    })


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_incidents(published: Iterable[Alert]) -> list[Alert]:
    """The firing event of every key whose last event (in ``published`` order) is firing."""
    last: dict[str, Alert] = {}
    for alert in published:
        last[alert.key] = alert
    return sorted((a for a in last.values() if a.state is AlertState.FIRING), key=lambda a: (a.started_at, a.key))


def alert_line(alert: Alert) -> str:
    """One line for logs and `tapstream alerts list`: severity, key, since when, message."""
    since = alert.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{alert.severity.value:<8} {alert.key:<36} since {since}  {alert.message}"
