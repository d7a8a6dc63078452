"""Prometheus metrics: one registry per process, served as text at /metrics.

Each long-running process builds its own ``CollectorRegistry`` (tests build as many as they
like, the global default registry is never used) and either mounts ``aiohttp_handler`` on an
aiohttp app it already serves (push endpoint, monitor) or starts ``serve`` on its own port
(worker, pull producer). Metric names start with ``tapstream_``; docs/metrics.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server

logger = logging.getLogger(__name__)

PREFIX = "tapstream_"


def new_registry() -> CollectorRegistry:
    """A registry of this process's own metrics (no default process/platform collectors)."""
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)


def aiohttp_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET /metrics handler for an aiohttp app."""

    async def metrics(request: web.Request) -> web.Response:
        body = exposition(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread; port 0 = off (None)."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics at http://%s:%d/metrics", host, port)
    return server
