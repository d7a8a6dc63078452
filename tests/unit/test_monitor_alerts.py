"""Alert conditions and the incident engine (monitor/alerts.py), from fabricated readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infra.pipeline_status import (
    LagPart, PipelineStatus, PushPart, ServicesPart, SpoolPart, StorePart, WorkerPart, PullPart,
)
from monitor.alerts import (
    AlertEngine, Condition, Evaluation, clock_drift, evaluate, log_memory, open_incidents, pull_offline, spool_backlog,
)
from schemas.alert import Alert, AlertKind, AlertState, Severity
from schemas.device_status import DeviceStatus, LinkState
from tapstream.settings import AlertSettings

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
LIMITS = AlertSettings(device_offline_s=600, clock_drift_s=120, log_memory_pct=90, spool_backlog_rows=1000,
                       spool_backlog_age_s=300, consumer_lag=5000, sink_failing_s=60)
OFFLINE = AlertKind.DEVICE_OFFLINE


def device(serial: str = "SN-1", *, connected: bool = True, state: LinkState = LinkState.LIVE,
           last_seen: datetime | None = T0, reported_at: datetime = T0, **facts: object) -> DeviceStatus:
    return DeviceStatus.model_validate({
        "device_serial": serial, "state": state, "connected": connected, "last_seen": last_seen,
        "reported_at": reported_at, **facts,
    })


def pipeline(*, lag: int | None = 0, failing: dict[str, str] | None = None, running: bool = True,
             spool_depth: int = 0, spool_age: float | None = None) -> PipelineStatus:
    return PipelineStatus(
        collected_at=T0.timestamp(), services=ServicesPart(running={"kafka": True}),
        worker=WorkerPart(running=running, pid=7, failing=failing or {}),
        lag=LagPart("tapstream-worker", "attendance.raw", lag=lag),
        push=PushPart("http://127.0.0.1:8081"), pull=PullPart(),
        spools=[SpoolPart("push", present=True, depth=spool_depth, oldest_age_s=spool_age), SpoolPart("pull")],
        store=StorePart(),
    )


def cond(holds: bool | None, subject: str = "SN-1", kind: AlertKind = OFFLINE, *, value: float | None = None,
         since: datetime | None = None, grace_s: float = 0.0) -> Condition:
    return Condition(kind, subject, holds, f"{subject} {'bad' if holds else 'fine'}", value,
                     since=since, grace_s=grace_s)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(engine: AlertEngine, *rounds: list[Condition], start: float = 0, every: float = 15,
        unread: frozenset[AlertKind] = frozenset()) -> list[Alert]:
    events: list[Alert] = []
    for i, conditions in enumerate(rounds):
        events += engine.step(Evaluation(at(start + i * every), conditions, unread))
    return events


# --- conditions ---


def test_a_pull_device_not_seen_for_longer_than_the_limit_is_offline() -> None:
    status = device(connected=False, state=LinkState.BACKOFF, last_seen=T0, reported_at=T0)
    assert not pull_offline(status, LIMITS, at(600)).holds
    late = pull_offline(status, LIMITS, at(601))
    assert late.holds and late.value == 601 and late.threshold == 600 and late.since == T0
    assert "last seen 10m ago" in late.message


def test_a_connected_status_vouches_until_it_was_reported_and_then_ages_out() -> None:
    # Live capture leaves last_seen alone while nobody punches: the fresh connected report counts.
    live = device(last_seen=T0, reported_at=at(900))
    assert not pull_offline(live, LIMITS, at(1000)).holds
    # Its producer died: the last status stays on the topic and ages.
    assert pull_offline(live, LIMITS, at(1501)).holds
    # A disconnected report vouches for nothing.
    gone = device(connected=False, state=LinkState.BACKOFF, last_seen=T0, reported_at=at(900))
    assert pull_offline(gone, LIMITS, at(1000)).holds


def test_a_device_never_reached_is_offline_after_the_grace_from_its_first_failure() -> None:
    never = device(connected=False, state=LinkState.BACKOFF, last_seen=None, failing_since=at(-30))
    c = pull_offline(never, LIMITS, at(0))
    assert c.holds and c.since == at(-30) and c.grace_s == 600 and c.value is None


def test_clock_drift_either_way_and_unknown_until_measured() -> None:
    assert clock_drift(device(clock_offset_s=-121.0), LIMITS).holds
    assert clock_drift(device(clock_offset_s=121.0), LIMITS).holds
    assert not clock_drift(device(clock_offset_s=120.0), LIMITS).holds
    assert clock_drift(device(), LIMITS).holds is None
    assert "+300s off" in clock_drift(device(clock_offset_s=300.0), LIMITS).message


def test_log_memory_percent_of_capacity_critical_when_full() -> None:
    assert not log_memory(device(records=900, records_capacity=1000), LIMITS).holds
    warn = log_memory(device(records=901, records_capacity=1000), LIMITS)
    assert warn.holds and warn.value == 90.1 and warn.severity is Severity.WARNING
    assert log_memory(device(records=1000, records_capacity=1000), LIMITS).severity is Severity.CRITICAL
    assert log_memory(device(records=5, records_capacity=0), LIMITS).holds is None
    assert log_memory(device(records=None, records_capacity=1000), LIMITS).holds is None


def test_spool_backlog_by_rows_or_by_age() -> None:
    assert not spool_backlog("push", True, 1000, 299.0, None, LIMITS).holds
    rows = spool_backlog("push", True, 1001, 1.0, None, LIMITS)
    assert rows.holds and (rows.value, rows.threshold) == (1001, 1000)
    old = spool_backlog("push", True, 3, 301.0, None, LIMITS)
    assert old.holds and (old.value, old.threshold) == (301.0, 300)
    assert not spool_backlog("pull", False, 0, None, None, LIMITS).holds
    assert spool_backlog("pull", False, 0, None, "OperationalError: locked", LIMITS).holds is None


def test_evaluate_reads_every_source_and_names_what_it_could_not() -> None:
    statuses = {"SN-1": device("SN-1", clock_offset_s=500.0), "SN-2": device("SN-2", state=LinkState.STOPPED)}
    push = {"PU-1": at(-700), "SN-1": at(-5000)}  # SN-1 is a pull device: its status decides
    status = pipeline(lag=6000, failing={"postgres": "down"})
    ev = evaluate(LIMITS, T0, status, statuses, push, ["postgres", "clickhouse"])
    holding = sorted(c.key for c in ev.conditions if c.holds)
    assert holding == ["clock_drift:SN-1", "consumer_lag:tapstream-worker", "device_offline:PU-1",
                       "sink_failing:postgres"]
    assert {c.key: c.holds for c in ev.conditions}["sink_failing:clickhouse"] is False
    # A stopped device is no longer watched: all its conditions clear.
    assert all(c.holds is False for c in ev.conditions if c.subject == "SN-2")
    assert ev.unread == frozenset()
    blind = evaluate(LIMITS, T0, None, None, None)
    assert blind.conditions == [] and blind.unread == frozenset(AlertKind)


def test_a_stopped_or_unreadable_worker_says_nothing_about_its_sinks() -> None:
    stale = evaluate(LIMITS, T0, pipeline(failing={"postgres": "x"}, running=False), {}, {}, ["postgres"])
    assert [c.holds for c in stale.conditions if c.kind is AlertKind.SINK_FAILING] == [None]
    no_lag = evaluate(LIMITS, T0, pipeline(lag=None), {}, {}, [])
    assert [c.holds for c in no_lag.conditions if c.kind is AlertKind.CONSUMER_LAG] == [None]


# --- the engine ---


def test_fires_once_while_it_lasts_and_resolves_once_after_two_clear_rounds() -> None:
    engine = AlertEngine()
    events = run(engine, *[[cond(True, value=1.0)]] * 5, *[[cond(False)]] * 5)
    assert [e.state for e in events] == [AlertState.FIRING, AlertState.RESOLVED]
    fired, resolved = events
    assert fired.alert_id == resolved.alert_id and fired.key == "device_offline:SN-1"
    assert fired.at == at(0) and resolved.at == at(15 * 6)  # the second clear round
    assert resolved.message == "resolved: SN-1 fine" and resolved.started_at == fired.started_at
    assert engine.open_alerts() == []


def test_a_flapping_probe_makes_one_incident_not_a_storm() -> None:
    engine = AlertEngine()
    flapping = [[cond(i % 2 == 0)] for i in range(20)]
    events = run(engine, *flapping)
    assert [e.state for e in events] == [AlertState.FIRING]
    assert len(engine.open_alerts()) == 1


def test_unknown_readings_neither_fire_resolve_nor_count() -> None:
    engine = AlertEngine()
    assert run(engine, [cond(None)], [cond(None)]) == []
    events = run(engine, [cond(True)], [cond(False)], [cond(None)], [cond(None)], start=100)
    assert [e.state for e in events] == [AlertState.FIRING]  # one clear round, then blind: still open
    assert [e.state for e in run(engine, [cond(False)], start=200)] == [AlertState.RESOLVED]


def test_grace_from_first_sight_when_the_probe_does_not_know_the_start() -> None:
    engine = AlertEngine()
    failing = [cond(True, "postgres", AlertKind.SINK_FAILING, grace_s=60)]
    events = run(engine, *[failing] * 4, every=20)  # seen at 0, 20, 40, 60
    assert [(e.state, e.at, e.started_at) for e in events] == [(AlertState.FIRING, at(60), at(0))]


def test_a_condition_clearing_inside_its_grace_never_fires() -> None:
    engine = AlertEngine()
    bad, good = [cond(True, grace_s=60)], [cond(False)]
    assert run(engine, bad, bad, bad, good, bad, bad, bad, every=20) == []  # the clear round restarts the grace
    assert [e.state for e in run(engine, bad, start=200)] == [AlertState.FIRING]


def test_grace_counts_from_when_the_probe_says_it_began() -> None:
    engine = AlertEngine()
    events = run(engine, [cond(True, since=at(-600), grace_s=600)])
    assert len(events) == 1 and events[0].started_at == at(-600)


def test_a_subject_no_longer_reported_resolves_unless_its_source_was_unread() -> None:
    engine = AlertEngine()
    run(engine, [cond(True)])
    assert run(engine, [], [], [], start=100, unread=frozenset({OFFLINE})) == []
    events = run(engine, [], [], start=200)
    assert [e.state for e in events] == [AlertState.RESOLVED]
    assert events[0].message == "resolved: device_offline SN-1 no longer reported"


def test_incidents_are_per_key() -> None:
    engine = AlertEngine()
    events = run(engine, [cond(True, "A"), cond(True, "B"), cond(False, "C")], [cond(False, "A"), cond(True, "B")],
                 [cond(False, "A"), cond(True, "B")])
    assert [(e.subject, e.state) for e in events] == [
        ("A", AlertState.FIRING), ("B", AlertState.FIRING), ("A", AlertState.RESOLVED)]
    assert [a.subject for a in engine.open_alerts()] == ["B"]


def test_resolve_after_is_configurable() -> None:
    engine = AlertEngine(resolve_after=1)
    events = run(engine, [cond(True)], [cond(False)], [cond(True)])
    assert [e.state for e in events] == [AlertState.FIRING, AlertState.RESOLVED, AlertState.FIRING]
    assert events[0].alert_id != events[2].alert_id  # a new incident, a new id


def test_a_restored_engine_neither_refires_nor_forgets_to_resolve() -> None:
    first = AlertEngine()
    published = run(first, [cond(True, "A"), cond(True, "B")], [cond(True, "A"), cond(False, "B")],
                    [cond(True, "A"), cond(False, "B")])
    assert [(e.subject, e.state) for e in published] == [
        ("A", AlertState.FIRING), ("B", AlertState.FIRING), ("B", AlertState.RESOLVED)]
    assert [a.subject for a in open_incidents(published)] == ["A"]
    restarted = AlertEngine()
    restarted.restore(published)
    assert restarted.open_alerts() == [published[0]]
    again = run(restarted, [cond(True, "A"), cond(True, "B")], start=100)
    assert [(e.subject, e.state) for e in again] == [("B", AlertState.FIRING)]  # B is a new incident, A is not
    still_b = [cond(False, "A"), cond(True, "B")]
    events = run(restarted, still_b, still_b, start=200)
    assert [(e.subject, e.state, e.alert_id) for e in events] == [("A", AlertState.RESOLVED, published[0].alert_id)]
