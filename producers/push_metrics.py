"""What the push endpoint counts for Prometheus (served at its own GET /metrics).

Labels stay bounded whatever devices send: tables Tapstream does not know count as ``other``,
endpoints are the handful of iclock routes, reasons are the quarantine codes. Per-device
figures stay on /healthz: a push device need not be registered, so serials are unbounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric

from producers import adms
from tapstream.metrics import family


def table_label(table: str | None) -> str:
    """The ``table`` label of a request: the ADMS table in capitals, ``other`` or ``none``."""
    if table is None:
        return "none"
    return table.upper() if adms.table_kind(table) is not None else "other"


class PushMetrics:
    """Counters of one push endpoint, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests = Counter(
            "tapstream_push_requests", "Device requests answered, by iclock endpoint, ADMS table and HTTP status",
            ["endpoint", "table", "status"], registry=registry,
        )
        self._punches = Counter("tapstream_push_punches_accepted", "Punches spooled for the raw topic", registry=registry)
        self._quarantined = Counter(
            "tapstream_push_quarantined", "Lines or bodies spooled for the dead-letter topic, by reason",
            ["reason"], registry=registry,
        )

    def request(self, endpoint: str, table: str | None, status: int) -> None:
        self._requests.labels(endpoint, table_label(table), str(status)).inc()

    def upload(self, punches: int, reasons: Mapping[str, int]) -> None:
        """Count what one upload spooled (called once the spool holds it)."""
        if punches:
            self._punches.inc(punches)
        for reason, count in reasons.items():
            self._quarantined.labels(reason).inc(count)


def devices_metrics(seen: Callable[[], int], registered: Callable[[], int]) -> list[Metric]:
    """Serials heard from since start, and devices in the registry (read at scrape time)."""
    return [
        family("gauge", "tapstream_push_devices_seen", "Distinct device serials heard from since start", seen()),
        family("gauge", "tapstream_push_devices_registered", "Devices in the device registry", registered()),
    ]
