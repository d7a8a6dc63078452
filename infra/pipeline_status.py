"""`tapstream status`: the whole pipeline's health, read from outside, on one screen.

Every part is read by its own probe (infra.pipeline_probes), in parallel, each bounded by a
short timeout; a part that cannot be read is *unknown* with the reason, never an exception. Nothing here opens the
embedded ClickHouse store (its worker owns it): the worker is judged by its stats file.

The verdict is a pure function of the collected parts (``verdict``):

* ``down``: nothing gets stored — the worker is not running, Kafka or PostgreSQL is down, a
  topic is missing;
* ``degraded``: data flows, or waits safely, but needs a look — a sink failing, lag over
  ``LAG_LIMIT``, pull devices offline, a producer spool backing up, a registered kind of device
  with no producer running, a part that could not be read;
* ``ok``: none of those.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

LAG_LIMIT = 1000  # below this a running worker is just between batches
SPOOL_STALE_S = 60.0  # a spool row older than this means Kafka is not taking records


@dataclass
class ServicesPart:
    """The stack: service name -> running, and topics that do not exist."""

    running: dict[str, bool] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    missing_topics: list[str] = field(default_factory=list)
    unknown: str | None = None


@dataclass
class WorkerPart:
    """The worker's last saved counters (of its last run when it is not running)."""

    running: bool = False
    pid: int | None = None
    consumed: int = 0
    flushed: int = 0
    duplicates: int = 0
    unmatched: int = 0
    quarantined: int = 0
    rejected: int = 0
    written: dict[str, int] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)  # sink -> last error, while failing
    last_event_at: float | None = None
    last_flush_at: float | None = None
    unknown: str | None = None


@dataclass
class LagPart:
    """Messages of the raw topic the worker group has not committed yet."""

    group: str
    topic: str
    lag: int | None = None
    unknown: str | None = None


@dataclass
class SpoolPart:
    """One producer's SQLite outbox: rows not yet confirmed by Kafka (absent = never created)."""

    name: str
    present: bool = False
    depth: int = 0
    oldest_age_s: float | None = None
    unknown: str | None = None


@dataclass
class PushPart:
    """The ADMS endpoint, as its /healthz answers."""

    url: str
    answering: bool = False
    devices: int | None = None
    unknown: str | None = None


@dataclass
class PullDevice:
    serial: str
    connected: bool
    state: str
    last_seen: str | None = None
    clock_offset_s: float | None = None
    failures: int = 0


@dataclass
class PullPart:
    """The pull producer, as its status file says (running = its pid is alive)."""

    running: bool = False
    pid: int | None = None
    devices: list[PullDevice] = field(default_factory=list)
    unknown: str | None = None

    @property
    def offline(self) -> list[str]:
        return [d.serial for d in self.devices if not d.connected and d.state != "stopped"]


@dataclass
class StorePart:
    """What PostgreSQL holds for HR and operators; ``devices``: enabled devices per kind."""

    records_today: int | None = None
    open_unmatched: int | None = None
    quarantined_today: int | None = None
    quarantine_waiting: int | None = None
    devices: dict[str, int] = field(default_factory=dict)
    unknown: str | None = None


@dataclass
class PipelineStatus:
    """Every part at ``collected_at`` (epoch seconds)."""

    collected_at: float
    services: ServicesPart
    worker: WorkerPart
    lag: LagPart
    push: PushPart
    pull: PullPart
    spools: list[SpoolPart]
    store: StorePart
    lag_limit: int = LAG_LIMIT

    def verdict(self) -> tuple[str, list[str]]:
        return verdict(self)

    def to_dict(self) -> dict[str, Any]:
        state, reasons = self.verdict()
        data = asdict(self)
        data["pull"]["offline"] = self.pull.offline
        return {"verdict": state, "reasons": reasons, **data}

    def to_text(self) -> str:
        return render(self)


def verdict(s: PipelineStatus) -> tuple[str, list[str]]:
    """("ok" | "degraded" | "down", the reasons, worst first)."""
    down = _down_reasons(s)
    degraded = _degraded_reasons(s)
    return ("down" if down else "degraded" if degraded else "ok"), down + degraded


def _down_reasons(s: PipelineStatus) -> list[str]:
    reasons = [f"{name} down" for name, up in s.services.running.items() if not up and name != "clickhouse"]
    reasons += [f"topic {name} missing" for name in s.services.missing_topics]
    if s.worker.unknown is None and not s.worker.running:
        reasons.append("worker not running")
    return reasons


def _degraded_reasons(s: PipelineStatus) -> list[str]:
    reasons = [f"{part} unknown ({why})" for part, why in _unknowns(s)]
    if s.services.running.get("clickhouse") is False:
        reasons.append("clickhouse down")
    since = _clock(s.worker.last_flush_at, s.collected_at) if s.worker.last_flush_at else "start"
    reasons += [f"{sink} sink failing since {since}" for sink in sorted(s.worker.failing)]
    if s.lag.lag is not None and s.lag.lag > s.lag_limit:
        reasons.append(f"lag {s.lag.lag:,}")
    if s.pull.running and s.pull.offline:
        reasons.append(f"{len(s.pull.offline)} pull devices offline")
    if s.store.devices.get("pull") and not s.pull.running and s.pull.unknown is None:
        reasons.append(f"pull producer not running ({s.store.devices['pull']} pull devices registered)")
    if s.store.devices.get("push") and not s.push.answering and s.push.unknown is None:
        reasons.append(f"push endpoint not answering ({s.store.devices['push']} push devices registered)")
    for spool in s.spools:
        if spool.depth and (spool.oldest_age_s or 0) > SPOOL_STALE_S:
            reasons.append(f"{spool.name} spool backing up: {spool.depth:,} rows, oldest {_age(spool.oldest_age_s)}")
    return reasons


def _unknowns(s: PipelineStatus) -> list[tuple[str, str]]:
    parts: list[tuple[str, str | None]] = [
        ("stack", s.services.unknown), ("worker", s.worker.unknown), ("lag", s.lag.unknown),
        ("push", s.push.unknown), ("pull", s.pull.unknown), ("postgres data", s.store.unknown),
    ]
    parts += [(f"{spool.name} spool", spool.unknown) for spool in s.spools]
    # A service already reported down explains its own unreadable parts.
    if not all(s.services.running.get(name, True) for name in ("kafka", "postgres")):
        parts = [(p, w) for p, w in parts if p not in ("lag", "postgres data")]
    return [(part, why) for part, why in parts if why is not None]


def render(s: PipelineStatus) -> str:
    """One screen: the verdict first, then one aligned line (or two) per part."""
    state, reasons = verdict(s)
    lines = [f"{state.upper()}" + (f": {'; '.join(reasons)}" if reasons else "")]
    lines += _services_lines(s.services)
    lines += _worker_lines(s.worker, s.collected_at)
    lag = f"{s.lag.lag:,}" if s.lag.lag is not None else _unknown(s.lag.unknown)
    lines.append(_row("lag", f"{lag}  (group {s.lag.group} on {s.lag.topic})"))
    lines.append(_row("push", _push_text(s.push)))
    lines += _pull_lines(s.pull)
    lines.append(_row("spools", ", ".join(_spool_text(sp) for sp in s.spools)))
    lines.append(_row("postgres data", _store_text(s.store)))
    return "\n".join(lines)


def _row(label: str, text: str) -> str:
    return f"  {label:<14} {text}"


def _unknown(reason: str | None) -> str:
    return f"unknown ({reason})"


def _services_lines(p: ServicesPart) -> list[str]:
    if p.unknown is not None:
        return [_row("stack", _unknown(p.unknown))]
    lines = [_row(name, f"{'running' if up else 'DOWN':<8} {p.addresses.get(name, '')}")
             for name, up in p.running.items()]
    if p.missing_topics:
        lines.append(_row("topics", "MISSING " + ", ".join(p.missing_topics)))
    return lines


def _worker_lines(w: WorkerPart, now: float) -> list[str]:
    if w.unknown is not None:
        return [_row("worker", _unknown(w.unknown))]
    if w.pid is None:
        return [_row("worker", "not running (no stats yet)")]
    state = f"running, pid {w.pid}" if w.running else f"NOT running (last run pid {w.pid})"
    counts = (f"consumed {w.consumed:,}  flushed {w.flushed:,}  duplicates {w.duplicates:,}  "
              f"unmatched {w.unmatched:,}  quarantined {w.quarantined:,}  rejected {w.rejected:,}")
    written = ", ".join(f"{sink} {n:,}" for sink, n in sorted(w.written.items())) or "nothing yet"
    times = f"last event {_clock(w.last_event_at, now)}  last flush {_clock(w.last_flush_at, now)}"
    lines = [_row("worker", state), _row("", counts), _row("", f"written {written}"), _row("", times)]
    lines += [_row("", f"{sink} FAILING: {error}") for sink, error in sorted(w.failing.items())]
    return lines


def _push_text(p: PushPart) -> str:
    if p.unknown is not None:
        return _unknown(p.unknown)
    if not p.answering:
        return f"not answering on {p.url}"
    return f"answering on {p.url}, {p.devices if p.devices is not None else '?'} devices known"


def _pull_lines(p: PullPart) -> list[str]:
    if p.unknown is not None:
        return [_row("pull", _unknown(p.unknown))]
    if not p.running:
        return [_row("pull", "not running" + (f" (last run pid {p.pid})" if p.pid else ""))]
    offline = p.offline
    lines = [_row("pull", f"running, pid {p.pid}, {len(p.devices)} devices, "
                          f"{len(p.devices) - len(offline)} connected, {len(offline)} offline")]
    for d in p.devices:
        if d.serial in offline:
            offset = f"{d.clock_offset_s:+.0f}s" if d.clock_offset_s is not None else "?"
            lines.append(_row("", f"{d.serial} {d.state}, last seen {d.last_seen or 'never'}, "
                                  f"clock {offset}, {d.failures} failures"))
    return lines


def _spool_text(sp: SpoolPart) -> str:
    if sp.unknown is not None:
        return f"{sp.name} {_unknown(sp.unknown)}"
    if not sp.present:
        return f"{sp.name} none"
    oldest = f" (oldest {_age(sp.oldest_age_s)})" if sp.depth else ""
    return f"{sp.name} {sp.depth:,}{oldest}"


def _store_text(p: StorePart) -> str:
    if p.unknown is not None:
        return _unknown(p.unknown)
    return (f"records today {p.records_today:,}, open unmatched {p.open_unmatched:,}, "
            f"quarantined today {p.quarantined_today:,} ({p.quarantine_waiting:,} not replayed)")


def _clock(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    return f"{datetime.fromtimestamp(at).strftime('%Y-%m-%d %H:%M:%S')} ({_age(now - at)} ago)"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m"
