"""A pull device's failure bookkeeping: backoff, alert threshold, realtime switched off and on.

Pure (times are passed in), so the schedule is tested without sockets or sleeping:
reconnect delays double from ``backoff_initial_s`` to ``backoff_max_s`` (5 s … 300 s by
default); the ``alert_after_failures``-th consecutive failure raises one alert for the incident;
a device failing for ``realtime_off_after_s`` (24 h) is polled instead of live-captured; the
next success clears all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapstream.settings import PullSettings


@dataclass
class Health:
    """Consecutive failures of one device and what they have triggered."""

    failures: int = 0
    failing_since: float | None = None  # epoch seconds of the first failure of the incident
    alerted: bool = False
    realtime: bool = True
    last_error: str | None = None

    def failed(self, error: str, now: float, settings: PullSettings) -> list[str]:
        """Count a failure; return what it newly triggered: "alert" and/or "realtime-off"."""
        self.failures += 1
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = now
        triggered = []
        if not self.alerted and self.failures >= settings.alert_after_failures:
            self.alerted = True
            triggered.append("alert")
        if self.realtime and now - self.failing_since >= settings.realtime_off_after_s:
            self.realtime = False
            triggered.append("realtime-off")
        return triggered

    def succeeded(self) -> list[str]:
        """A catch-up pass worked: clear the incident; return "recovered" and/or "realtime-on"."""
        cleared = []
        if self.alerted:
            cleared.append("recovered")
        if not self.realtime:
            cleared.append("realtime-on")
        self.failures, self.failing_since, self.alerted, self.realtime = 0, None, False, True
        self.last_error = None
        return cleared

    def backoff_s(self, settings: PullSettings) -> float:
        """Seconds to wait before the next attempt (0 when nothing has failed)."""
        if self.failures == 0:
            return 0.0
        delay = settings.backoff_initial_s * 2 ** min(self.failures - 1, 30)
        return float(min(delay, settings.backoff_max_s))

    def alert_text(self) -> str | None:
        """The alert shown in the device status while the incident lasts."""
        if not self.alerted:
            return None
        return f"{self.failures} consecutive failures: {self.last_error}"
