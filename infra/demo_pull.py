"""The pull half of `tapstream demo`: two emulated terminals on port-4370 protocol, collected by
`tapstream pull` — one over TCP with a preloaded log, one over UDP with a comm key and the
16-byte record layout — live punches on top, and one dropped connection on the way.

What the terminals recorded is the expectation; the demo checks that PostgreSQL and ClickHouse
hold exactly those punches.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from emulator.device import DeviceConfig, FaultKind
from emulator.fleet import ThreadedFleet
from infra.harness import TapstreamProcess, pull_devices
from producers.registry import add_device, remove_device
from schemas.punch import compute_event_id
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

PULL_DEVICES = [
    DeviceConfig("DEMO-PULL-04", users=40, log_size=120, timezone="Europe/Berlin"),
    DeviceConfig("DEMO-PULL-05", users=40, log_size=80, timezone="Asia/Dhaka", comm_key=271828,
                 record_format=16, user_format=28),
]
UDP = {"DEMO-PULL-05"}
LIVE_PUNCHES = 10  # per device, once live capture is up
# A demo cannot wait five minutes for a catch-up pass: cycles of seconds, quick retries.
DEMO_PULL_ENV = {
    "TAPSTREAM_PULL__CATCHUP_INTERVAL_S": "4",
    "TAPSTREAM_PULL__INFO_REFRESH_S": "4",
    "TAPSTREAM_PULL__BACKOFF_INITIAL_S": "1",
}


@dataclass(frozen=True)
class PullOutcome:
    """The event ids of every punch the emulated terminals recorded."""

    serials: list[str]
    event_ids: set[str]


def play_pull(settings: Settings, logs: Path, say: Any) -> PullOutcome:
    """Serve the terminals, run `tapstream pull` until their punches are spooled into Kafka."""
    with ThreadedFleet(PULL_DEVICES) as fleet:
        _register(settings, fleet)
        try:
            return _collect(settings, fleet, logs, say)
        finally:
            _unregister(settings)  # the terminals end with the demo: a later `tapstream pull` must not chase them


def _collect(settings: Settings, fleet: ThreadedFleet, logs: Path, say: Any) -> PullOutcome:
    with TapstreamProcess(["pull"], logs / "pull.log", env={**os.environ, **DEMO_PULL_ENV}) as pull:
        _wait_live(settings, pull, 60)
        say(f"pull devices live: {', '.join(c.serial for c in PULL_DEVICES)} (logs of "
            f"{' and '.join(str(c.log_size) for c in PULL_DEVICES)} records caught up)")
        fleet.inject("DEMO-PULL-04", FaultKind.DROP, on_command=1000)  # its next connect: line dead
        for _ in range(LIVE_PUNCHES):
            for config in PULL_DEVICES:
                fleet.punch(config.serial)
            time.sleep(0.1)
        ids = {
            str(compute_event_id(c.serial, r.user_code, r.device_time, r.state))
            for c in PULL_DEVICES for r in fleet.generated(c.serial)
        }
        _wait_spooled_out(settings, pull, 60)
    return PullOutcome([c.serial for c in PULL_DEVICES], ids)


def _register(settings: Settings, fleet: ThreadedFleet) -> None:
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        for c in PULL_DEVICES:
            add_device(conn, serial=c.serial, kind="pull", timezone=c.timezone, name=c.serial, site="Demo",
                       address="127.0.0.1", port=fleet.port(c.serial), comm_key=c.comm_key,
                       transport="udp" if c.serial in UDP else "tcp")


def _unregister(settings: Settings) -> None:
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        for c in PULL_DEVICES:
            remove_device(conn, c.serial)


def _status(settings: Settings, pid: int) -> dict[str, Any]:
    return pull_devices(settings.path("pull", "status.json"), pid) or {}


def _wait_live(settings: Settings, pull: TapstreamProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_status(settings, pull.pid).get(c.serial, {}).get("state") == "live" for c in PULL_DEVICES):
        if not pull.alive() or time.monotonic() > deadline:
            raise TapstreamError(f"the pull devices did not go live within {timeout_s:.0f}s; see {pull.log}")
        time.sleep(0.3)


def _wait_spooled_out(settings: Settings, pull: TapstreamProcess, timeout_s: float) -> None:
    """Wait for one more catch-up of each device (it collects what live capture missed)."""
    start = {s: d.get("last_catchup_at") for s, d in _status(settings, pull.pid).items()}
    deadline = time.monotonic() + timeout_s
    while True:
        now = _status(settings, pull.pid)
        if all(now.get(s, {}).get("last_catchup_at") not in (None, start.get(s)) for s in start):
            return
        if not pull.alive() or time.monotonic() > deadline:
            raise TapstreamError(f"the pull devices did not catch up within {timeout_s:.0f}s; see {pull.log}")
        time.sleep(0.3)
