"""`tapstream monitor`: one aiohttp process serving the page, /events, /api/snapshot, /metrics.

The Kafka source (monitor.source) feeds the ring on the event loop; the device registry
refreshes in its own thread; the pipeline status (infra.pipeline_probes) is collected in a
thread every ``snapshot_interval_s``; the alert engine (monitor.alerting) runs as a task, given
the monitor's device statuses and push activity. Nothing blocking runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.pipeline_probes import collect_status
from infra.pipeline_status import PipelineStatus
from monitor.feed import Decoded, Feed, FeedMetrics
from monitor.ring import Ring, parse_filter, parse_id
from monitor.snapshot import build_snapshot, push_seen_today
from monitor.source import Tail, read_spans, start_cursor, topic_names
from monitor.sse import stream_events
from monitor.views import DeviceBoard
from producers.registry import Registry, postgres_loader
from tapstream.errors import first_line
from tapstream.heap import freeze_startup_heap
from tapstream.metrics import aiohttp_handler, new_registry
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Kernel send buffer of an /events connection. Left to autotuning it grows to megabytes, which
# hides a stalled client for thousands of events and costs that much memory per client; this
# still carries a few thousand events a second to a client 100 ms away.
SEND_BUFFER = 256 * 1024
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Monitor:
    """The monitor's parts, started and stopped together (``run_monitor`` adds the signals)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics_registry = new_registry()
        self.registry = Registry(
            postgres_loader(settings.postgres.effective_dsn()),
            snapshot_path=settings.path("monitor", "devices.json"), refresh_s=settings.devices.registry_refresh_s,
        )
        self.names = topic_names(settings.topics)
        self.status: PipelineStatus | None = None
        self.feed: Feed | None = None
        self._tail: Tail | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Load the registry, start reading the topics, and listen."""
        s = self.settings
        await asyncio.to_thread(self.registry.start)
        start = await asyncio.to_thread(start_cursor, s.kafka.bootstrap, self.names, s.monitor.backlog_events)
        board = DeviceBoard(self.registry.lookup, self.registry.devices, s.alerts.device_offline_s)
        await self._load_push_seen(board)
        self.feed = Feed(Ring(s.monitor.ring_events, start), board, s.monitor.client_buffer,
                         FeedMetrics(self.metrics_registry))
        self._tail = Tail(s.kafka.bootstrap, self.names, start, self.feed.ingest, asyncio.get_running_loop())
        self._tail.start()
        self._tasks.append(asyncio.create_task(self._refresh()))
        if s.monitor.run_alerts:
            self._tasks.append(asyncio.create_task(self._alerts(board)))
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.monitor.host, s.monitor.port).start()
        logger.info("monitor on http://%s:%d (events from %s)", s.monitor.host, s.monitor.port, start.id())

    async def stop(self) -> None:
        self._stop.set()
        for task in [*self._streams, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._tail is not None:
            await asyncio.to_thread(self._tail.stop)
        self.registry.stop()

    async def _load_push_seen(self, board: DeviceBoard) -> None:
        push = [serial for serial, info in self.registry.devices().items() if info.kind == "push"]
        try:
            board.push_seen.update(await asyncio.to_thread(push_seen_today, self.settings.postgres.effective_dsn(), push))
        except Exception as exc:  # Postgres away: push devices start as unseen until they punch
            logger.warning("push devices' last punches unknown at start: %s", first_line(exc))

    async def _refresh(self) -> None:
        """Collect the pipeline status in a thread and notice push devices falling silent."""
        while not self._stop.is_set():
            try:
                self.status = await asyncio.to_thread(collect_status, self.settings)
            except Exception:  # collect_status turns probe failures into "unknown"; this is a bug
                logger.exception("pipeline status collection failed")
            assert self.feed is not None
            self.feed.check_push_devices()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.monitor.snapshot_interval_s)

    async def _alerts(self, board: DeviceBoard) -> None:
        try:
            from monitor.alerting import AlertRunner  # the alert engine: optional for the feed itself
        except ImportError as exc:
            logger.warning("alerts off: the alert engine is not installed (%s)", exc)
            return
        runner = AlertRunner(self.settings, lambda: board.statuses, lambda: board.push_seen)
        await runner.run(self._stop)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/snapshot", self.snapshot)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", aiohttp_handler(self.metrics_registry))
        app.router.add_get("/", self.index)
        if STATIC.is_dir():
            app.router.add_static("/static/", STATIC)
        return app

    async def events(self, request: web.Request) -> web.StreamResponse:
        assert self.feed is not None
        given = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            cursor = parse_id(given) if given else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await stream_events(self.feed, request, resp, parse_filter(request.query), cursor, self._read_spans,
                                self.settings.monitor.heartbeat_s)
        finally:
            self._streams.discard(task)
        return resp

    async def _read_spans(self, spans: dict[str, tuple[int, int]]) -> list[Decoded]:
        return await asyncio.to_thread(read_spans, self.settings.kafka.bootstrap, self.names, spans)

    async def snapshot(self, request: web.Request) -> web.Response:
        assert self.feed is not None
        return web.json_response(build_snapshot(self.feed, self.status, datetime.now(UTC)))

    async def healthz(self, request: web.Request) -> web.Response:
        assert self.feed is not None
        return web.json_response({
            "ok": True, "clients": len(self.feed.clients), "ring": len(self.feed.ring.entries),
            "last_event_id": self.feed.ring.head.id(), "registry": {"devices": len(self.registry),
                                                                    "healthy": self.registry.healthy},
        })

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = STATIC / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text="the monitor page is not installed (monitor/static/index.html)")
        return web.FileResponse(page)


async def run_monitor(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop``), then stop every part."""
    stop = stop or asyncio.Event()
    monitor = Monitor(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await monitor.start()
        freeze_startup_heap("monitor")
        await stop.wait()
        logger.info("stopping the monitor")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await monitor.stop()
