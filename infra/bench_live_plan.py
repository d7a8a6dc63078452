"""The pure half of `tapstream bench live`: the tap schedule, the uploads, the figures.

Nothing here touches a service (tests/unit/test_bench_live.py covers it whole):

* ``tap_schedule``: ``rate`` taps a second for ``duration`` seconds, evenly spaced, round-robin
  over the push devices; each tap's badge cycles through the employees per device, so no two
  taps share (device, badge, second, state) and every event id is distinct. The tap time (epoch
  seconds) is what every latency is measured from.
* ``uploads``: what each device POSTs and when: every ``interval`` seconds (each device at its
  own phase, as realtime-upload terminals do) the taps of the last interval, as ATTLOG lines.
* ``Histogram``: latencies counted in whole milliseconds, merged across client processes,
  and ``percentiles`` of it;
* ``result_line``: the one JSON object the command prints, with a fixed set of keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.punch import DEVICE_TIME_FORMAT, compute_event_id

# Keys of the JSON line, in the order they are documented (docs/benchmarks.md).
RESULT_KEYS = (
    "bench", "rate", "duration_s", "devices", "employees", "upload_interval_s", "clients", "slow_clients",
    "punches", "rate_achieved", "uploads_failed", "upload_lag_ms", "tap_to_sse_ms", "tap_to_postgres_ms", "stages_ms",
    "postgres_rows", "missing_per_client", "duplicates", "clients_behind", "slow_readers", "monitor_sse",
    "throughput", "cpu_pct", "settings", "machine", "versions", "run_id",
)


@dataclass(frozen=True)
class LiveOptions:
    """What to measure: rate taps/s for duration_s from ``devices`` push devices uploading
    every upload_interval_s; ``clients`` SSE readers (``slow_clients`` slow ones besides);
    compare_events: the pre-loaded events of each throughput run (0: no comparison), run
    compare_pairs times with 0 and with the slow readers."""

    rate: float = 500.0
    duration_s: float = 60.0
    clients: int = 100
    slow_clients: int = 0
    devices: int = 20
    employees: int = 1000
    upload_interval_s: float = 0.15
    client_procs: int = 2
    batch_within_s: float | None = None
    fetch_max_wait_ms: int | None = None
    batch_max: int | None = None
    compare_events: int = 30_000
    compare_pairs: int = 3
    drain_s: float = 60.0
    keep: bool = False


@dataclass(frozen=True)
class Tap:
    """One punch as it happens: epoch time, device, badge, state, and its event id."""

    at: float
    serial: str
    code: str
    state: int
    event_id: str

    @property
    def device_time(self) -> datetime:
        """The device's wall clock (UTC, naive, whole seconds) at the tap."""
        return datetime.fromtimestamp(int(self.at), UTC).replace(tzinfo=None)

    def attlog_line(self) -> str:
        """The ADMS ATTLOG row: PIN, time, status, verify (1 = fingerprint), workcode, reserved."""
        return f"{self.code}\t{self.device_time.strftime(DEVICE_TIME_FORMAT)}\t{self.state}\t1\t\t0\t0"


@dataclass(frozen=True)
class Upload:
    """One device POST: when it is sent (epoch s), by which device, carrying which taps."""

    at: float
    serial: str
    taps: tuple[Tap, ...]

    def body(self) -> bytes:
        return "".join(t.attlog_line() + "\n" for t in self.taps).encode()


def device_serials(count: int) -> list[str]:
    """``count`` push devices LIVE-0001, ..."""
    return [f"LIVE-{i + 1:04d}" for i in range(count)]


def check_plan(options: LiveOptions) -> None:
    """Raise ValueError when the options cannot give distinct event ids or a steady rate."""
    if options.rate <= 0 or options.duration_s <= 0 or options.devices < 1 or options.employees < 1:
        raise ValueError("rate, duration, devices and employees must all be positive")
    per_device = options.rate / options.devices
    # A badge comes back on a device every `employees` taps: it must be at least a second
    # later, or its (device, badge, second, state) - its event id - would repeat.
    if options.employees < per_device * 2:
        raise ValueError(f"{options.employees} employees repeat within a second at {per_device:.0f} taps/s a device")
    if not 0.01 <= options.upload_interval_s <= 10:
        raise ValueError("the upload interval must be 0.01-10 s")


def tap_schedule(options: LiveOptions, start: float, codes: list[str]) -> list[Tap]:
    """Evenly spaced taps from ``start`` (epoch s): tap i at start + i / rate, device i mod D."""
    check_plan(options)
    serials = device_serials(options.devices)
    count = int(options.rate * options.duration_s)
    taps: list[Tap] = []
    for i in range(count):
        slot, turn = i % len(serials), i // len(serials)
        serial, at = serials[slot], start + i / options.rate
        code = codes[(turn + slot * 7) % len(codes)]  # each device starts elsewhere in the list
        tap = Tap(at, serial, code, 0, "")
        state = 0 if tap.device_time.hour < 12 else 1
        event_id = str(compute_event_id(serial, code, tap.device_time, state))
        taps.append(Tap(at, serial, code, state, event_id))
    return taps


def uploads(taps: Iterable[Tap], options: LiveOptions, start: float) -> list[Upload]:
    """Each device's POSTs in time order: every interval, at its own phase, the taps since its last one.

    Device d uploads at start + (d / D + k) * interval for k = 0, 1, ...: the phases spread the
    devices' requests over the interval instead of all at once.
    """
    interval, serials = options.upload_interval_s, device_serials(options.devices)
    pending: dict[str, list[Tap]] = {s: [] for s in serials}
    for tap in taps:
        pending[tap.serial].append(tap)
    out: list[Upload] = []
    for d, serial in enumerate(serials):
        phase = start + d / len(serials) * interval
        batch: list[Tap] = []
        k = 0
        for tap in pending[serial]:
            while tap.at >= phase + k * interval:
                if batch:
                    out.append(Upload(phase + k * interval, serial, tuple(batch)))
                    batch = []
                k += 1
            batch.append(tap)
        if batch:
            out.append(Upload(phase + k * interval, serial, tuple(batch)))
    out.sort(key=lambda u: u.at)
    return out


Histogram = Counter[int]  # latency in whole milliseconds -> how many


def histogram(latencies_ms: Iterable[float]) -> Histogram:
    """Count latencies (ms) by whole millisecond, rounded down."""
    return Counter(int(x // 1) for x in latencies_ms)


def merge(histograms: Iterable[Mapping[Any, int]]) -> Histogram:
    """One histogram from several (keys may come as strings from JSON)."""
    out: Histogram = Counter()
    for h in histograms:
        for key, count in h.items():
            out[int(key)] += count
    return out


def percentiles(hist: Mapping[int, int]) -> dict[str, float | int | None]:
    """count, p50, p95, p99 and max (ms) of a histogram; None for an empty one.

    A percentile is the smallest latency that at least that share of the samples does not exceed.
    """
    total = sum(hist.values())
    if not total:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    keys = sorted(hist)
    out: dict[str, float | int | None] = {"count": total}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        need, seen = q * total, 0
        for key in keys:
            seen += hist[key]
            if seen >= need:
                out[name] = key
                break
    out["max"] = keys[-1]
    return out


# Where a punch's time goes, from the timestamps a live punch carries (same machine, one clock):
# the device's wait for its next upload and the POST; spool, raw topic, worker batch and both
# sinks; the live-topic send, the monitor's read and fan-out, the client's read.
STAGES = ("tap_to_received", "received_to_recorded", "recorded_to_sse")


def stage_latencies(punch: Mapping[str, Any], tap_at: float, arrived_at: float) -> dict[str, float]:
    """ms per STAGES of one SSE punch object (``received_at``/``recorded_at`` ISO times)."""
    received = datetime.fromisoformat(str(punch["received_at"])).timestamp()
    recorded = datetime.fromisoformat(str(punch["recorded_at"])).timestamp()
    return {"tap_to_received": (received - tap_at) * 1000, "received_to_recorded": (recorded - received) * 1000,
            "recorded_to_sse": (arrived_at - recorded) * 1000}


def throughput_ratio(without: float | None, with_slow: float | None) -> float | None:
    """Worker events/s with slow clients divided by without them (None if either is unknown)."""
    if not without or with_slow is None:
        return None
    return round(with_slow / without, 3)


def slow_summary(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """What the slow readers of every reader process got: clients told ``behind`` or cut off
    (they reconnect), behind notices read, reconnections, bytes read."""
    slow = [c for r in results for c in r.get("slow", [])]
    return {"clients": len(slow), "cut_off": sum(1 for c in slow if c["behind"] or c["reconnects"]),
            "behind_notices": sum(c["behind"] for c in slow), "reconnects": sum(c["reconnects"] for c in slow),
            "bytes": sum(c["bytes"] for c in slow)}


def sse_counters(metrics_text: str) -> dict[str, float]:
    """The monitor's own ``tapstream_sse_*`` samples from its Prometheus /metrics text."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("tapstream_sse_"):
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("tapstream_sse_")] = float(value)
    return out


def result_line(**fields: object) -> dict[str, object]:
    """The result as one dict with exactly RESULT_KEYS (missing ones None, unknown ones refused)."""
    unknown = set(fields) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"not result fields: {sorted(unknown)}")
    return {key: fields.get(key) for key in RESULT_KEYS}
