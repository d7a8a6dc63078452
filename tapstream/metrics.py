"""Prometheus metrics: one registry per process, served as text at /metrics.

Each long-running process builds its own ``CollectorRegistry`` (tests build as many as they
like, the global default registry is never used) and either mounts ``aiohttp_handler`` on an
aiohttp app it already serves (push endpoint, monitor) or starts ``serve`` on its own port
(worker, pull producer). Metric names start with ``tapstream_``; docs/metrics.md lists them.

Values that some object already keeps (a spool's depth, a publisher's counters, a device's
state) are read at scrape time by ``collect_with``: nothing on the hot path changes for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Literal
from wsgiref.simple_server import WSGIServer

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest, start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "tapstream_"
Samples = Mapping[tuple[str, ...], float]


def new_registry() -> CollectorRegistry:
    """A registry of this process's own metrics (no default process/platform collectors)."""
    # A `_created` timestamp series beside every counter doubles the series for nothing
    # Tapstream's dashboards use (process-wide switch; calling it again is harmless).
    disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)


def aiohttp_handler(
    registry: CollectorRegistry, *, off_loop: bool = False
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET /metrics handler for an aiohttp app; ``off_loop``: collect in a worker thread, for
    registries whose collectors do I/O (a spool query) that must not stall the event loop."""

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(exposition, registry) if off_loop else exposition(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def serve(registry: CollectorRegistry, host: str, port: int, setting: str = "the metrics port") -> WSGIServer | None:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread; port 0 = off (None).

    A port that cannot be bound is logged once as an ERROR naming ``setting`` (the variable
    that moves it) and the process carries on without metrics: they never stop the pipeline.
    """
    if port == 0:
        logger.info("metrics off (%s=0)", setting)
        return None
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        logger.error("metrics NOT served: cannot listen on %s:%d (%s); set %s to a free port, or 0 to turn them off",
                     host, port, exc, setting)
        return None
    logger.info("metrics at http://%s:%d/metrics", host, port)
    return server


def family(kind: Literal["counter", "gauge"], name: str, doc: str, samples: float | Samples,
           labels: Sequence[str] = ()) -> Metric:
    """A metric family from plain values: one number, or {label values: number} for ``labels``."""
    metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels) or None)
    if isinstance(samples, Mapping):
        for values, value in samples.items():
            metric.add_metric(list(values), value)
    else:
        metric.add_metric([], samples)
    return metric


class _Sampled(Collector):
    """Calls ``sample`` at every scrape; a failing sample costs its metrics, never the scrape."""

    def __init__(self, sample: Callable[[], Iterable[Metric]]) -> None:
        self._sample = sample

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._sample())
        except Exception as exc:  # a closed spool at shutdown, a bug: the other metrics still go out
            logger.warning("metrics sample %s failed: %s", getattr(self._sample, "__qualname__", self._sample), exc)
            return []


def collect_with(registry: CollectorRegistry, sample: Callable[[], Iterable[Metric]]) -> None:
    """Register ``sample`` (returning metric families, see ``family``) to be read at every scrape."""
    registry.register(_Sampled(sample))
