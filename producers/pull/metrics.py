"""What the pull producer counts for Prometheus (served on ``metrics.pull_port``).

Devices are labelled by serial here: a pull device exists only because the registry lists it,
so the count of series is bounded by the registry. Punches and failures are counted as they
happen (a device worker restarted on a registry change keeps the process's totals); link
states are read from the running workers at scrape time.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric

from schemas.device_status import LinkState
from schemas.punch import PunchSource
from tapstream.metrics import family

if TYPE_CHECKING:
    from producers.pull.device import DeviceWorker

SOURCES = {PunchSource.PULL_LIVE: "live", PunchSource.PULL_POLL: "poll"}


class PullMetrics:
    """Counters of one pull producer, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._punches = Counter("tapstream_pull_punches", "Punch records spooled, by source: live capture or log poll",
                                ["source"], registry=registry)
        self._failures = Counter("tapstream_pull_device_failures",
                                 "Device cycles that failed (connect, read, identity, live capture)", registry=registry)
        for source in SOURCES.values():
            self._punches.labels(source)

    def punches(self, source: PunchSource, count: int) -> None:
        if count:
            self._punches.labels(SOURCES.get(source, str(source))).inc(count)

    def failure(self) -> None:
        self._failures.inc()


def devices_metrics(workers: Sequence[DeviceWorker]) -> list[Metric]:
    """Devices connected, by link state, and each device's link (read at scrape time)."""
    states = Tally({state.value: 0 for state in LinkState})
    connected: dict[tuple[str, ...], float] = {}
    failing: dict[tuple[str, ...], float] = {}
    for worker in workers:
        status = worker.status
        states[status.state.value] += 1
        connected[(worker.device.serial,)] = 1.0 if status.connected else 0.0
        failing[(worker.device.serial,)] = float(status.consecutive_failures)
    return [
        family("gauge", "tapstream_pull_devices_connected", "Pull devices with an open session now", sum(connected.values())),
        family("gauge", "tapstream_pull_devices", "Pull devices by link state",
               {(state,): float(n) for state, n in states.items()}, ["state"]),
        family("gauge", "tapstream_pull_device_connected", "1 while the device has an open session", connected, ["device"]),
        family("gauge", "tapstream_pull_device_consecutive_failures", "Failures in a row of the device (0: healthy)",
               failing, ["device"]),
    ]
