"""The ADMS/iclock HTTP endpoint (`tapstream push`): devices POST, the spool keeps, Kafka gets.

Request path: read the raw body (streamed, capped), decide what it becomes (punches for the raw
topic, quarantine records for the dead-letter topic, or nothing), append that to the spool in
one fsynced transaction, wake the publisher, and only then answer the device. The answer is an
error only when the spool cannot write (503: the device keeps its batch and retries); bad lines
are quarantined and acknowledged, so a device never re-sends a batch forever.

``upload_outcome`` is the decision as a plain function; ``PushEndpoint`` wires it to aiohttp.
GET /healthz answers in JSON, GET /metrics in Prometheus text (producers.push_metrics, docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry

from producers import adms
from producers.publisher import Publisher, PublisherLike, publishing_metrics
from producers.push_metrics import PushMetrics, devices_metrics
from producers.registry import DeviceInfo, Registry, postgres_loader
from producers.spool import Spool, SpoolRecord
from schemas.codec import encode
from schemas.quarantine import QuarantineRecord, Reason, Stage, quarantine
from tapstream.errors import SpoolError
from tapstream.heap import freeze_startup_heap
from tapstream.metrics import aiohttp_handler, collect_with, new_registry
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

QUARANTINE_HEAD_BYTES = 64 * 1024  # kept of a body that is too large or unknown (fits Kafka)
_DRAIN_FACTOR = 4  # without Content-Length, read at most this many limits to size a body
_MAX_TRACKED_DEVICES = 10_000  # bound per-device counters against serial-spraying clients
Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True)
class Body:
    """A request body; when ``complete`` is False, ``data`` is only its head."""

    data: bytes
    size: int
    complete: bool


@dataclass
class Outcome:
    """What an upload becomes: records to spool and the reply once they are durable."""

    records: list[SpoolRecord]
    reply: str
    punches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # quarantined records by reason
    status: int = 200

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())


@dataclass
class _Stats:
    tables: Counter[str] = field(default_factory=Counter)
    devices: dict[str, Counter[str]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)

    def device(self, serial: str) -> Counter[str]:
        if serial not in self.devices and len(self.devices) >= _MAX_TRACKED_DEVICES:
            serial = "<other>"
        return self.devices.setdefault(serial, Counter())


def upload_outcome(
    table: str | None, body: bytes, serial: str, device: DeviceInfo | None, settings: Settings, received_at: datetime
) -> Outcome:
    """Decide the spool records and the reply for one upload (pure: no I/O)."""
    kind = adms.table_kind(table)
    if table is None or kind is None:
        record = quarantine(
            Reason.UNKNOWN_TABLE, f"table {table!r} is not an ADMS table Tapstream knows{_cut(body)}",
            Stage.PUSH, body[:QUARANTINE_HEAD_BYTES], device_serial=serial, original_size=len(body), now=received_at,
        )
        return _quarantined(settings, serial, [record] if body else [], "OK")
    if kind is adms.TableKind.PLAIN:
        return Outcome([], "OK")
    lines = adms.record_lines(body)
    if kind is adms.TableKind.COUNTED:
        return Outcome([], adms.upload_reply(table, len(lines)))
    if device is None or not device.enabled:
        detail = "device not in the registry" if device is None else "device disabled in the registry"
        records = [
            quarantine(Reason.UNKNOWN_DEVICE, detail, Stage.PUSH, line, device_serial=serial, now=received_at)
            for line in lines
        ]
        return _quarantined(settings, serial, records, adms.upload_reply(table, len(lines)))
    tz = device.timezone or settings.devices.default_timezone
    batch = adms.parse_attlog(body, device_serial=serial, device_tz=tz, received_at=received_at)
    key = serial.encode("utf-8")
    spooled: list[SpoolRecord] = [(settings.topics.raw, key, encode(punch)) for punch in batch.punches]
    spooled += [(settings.topics.dlq, key, encode(record)) for record in batch.quarantined]
    return Outcome(
        spooled, adms.upload_reply(table, batch.lines), punches=len(batch.punches),
        reasons=Counter(record.reason.value for record in batch.quarantined),
    )


def too_large_outcome(body: Body, serial: str, settings: Settings, received_at: datetime) -> Outcome:
    """413 for a body over the limit; its head goes to the dead-letter topic."""
    limit = settings.push.max_body_bytes
    reply = f"FAIL: body of {body.size} bytes exceeds the {limit}-byte limit"
    record = quarantine(
        Reason.BODY_TOO_LARGE, reply.removeprefix("FAIL: ") + _cut(body.data, body.size), Stage.PUSH,
        body.data[:QUARANTINE_HEAD_BYTES], device_serial=serial, original_size=body.size, now=received_at,
    )
    outcome = _quarantined(settings, serial, [record], reply)
    outcome.status = 413
    return outcome


def _quarantined(settings: Settings, serial: str, records: list[QuarantineRecord], reply: str) -> Outcome:
    key = serial.encode("utf-8")
    reasons = Counter(r.reason.value for r in records)
    return Outcome([(settings.topics.dlq, key, encode(r)) for r in records], reply, reasons=reasons)


def _cut(data: bytes, size: int | None = None) -> str:
    """Say so when the quarantined bytes are only the head of the input."""
    size = len(data) if size is None else size
    kept = min(len(data), QUARANTINE_HEAD_BYTES)
    return f" (first {kept} of {size} bytes kept)" if size > kept else ""


async def read_body(request: web.Request, limit: int) -> Body:
    """Stream the body; past ``limit`` bytes keep only the head and stop buffering."""
    declared = request.content_length
    buf = bytearray()
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size <= limit:
            buf += chunk
            continue
        if len(buf) < QUARANTINE_HEAD_BYTES:
            buf += chunk[: QUARANTINE_HEAD_BYTES - len(buf)]
        del buf[QUARANTINE_HEAD_BYTES:]  # only the head is kept from here on
        # Known size: no need to read the rest. Unknown (chunked): read on to measure, bounded.
        if declared is not None or size > limit * _DRAIN_FACTOR:
            break
    if size > limit:
        return Body(bytes(buf[:QUARANTINE_HEAD_BYTES]), max(size, declared or 0), complete=False)
    return Body(bytes(buf), size, complete=True)


def text_reply(text: str, status: int = 200) -> web.Response:
    """A plain-text device reply with the headers the protocol expects (§1, §14.2)."""
    headers = {
        # Devices set their clock from Date: state it explicitly rather than rely on a default.
        "Date": formatdate(usegmt=True),
        "Pragma": "no-cache",
        "Cache-Control": "no-store",
        "Server": "tapstream",
    }
    return web.Response(status=status, body=text.encode("utf-8"), content_type="text/plain", headers=headers)


class PushEndpoint:
    """Request handlers; counters per table and per device for /healthz, totals for /metrics."""

    def __init__(
        self, settings: Settings, spool: Spool, registry: Registry, publisher: PublisherLike, metrics: PushMetrics
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.registry = registry
        self.publisher = publisher
        self.stats = _Stats()
        self.metrics = metrics

    async def cdata(self, request: web.Request) -> web.Response:
        query = adms.parse_query(request.query_string)
        serial = _require_serial(query)
        if request.method == "GET" or (not request.body_exists and query.table is None):
            return self._handshake(serial, query) if query.options else text_reply("OK")
        received_at = datetime.now(UTC)
        body = await read_body(request, self.settings.push.max_body_bytes)
        if not body.complete:
            logger.warning("device %s: %d-byte body over the limit (table %s)", serial, body.size, query.table)
            return await self._commit(serial, query.table, too_large_outcome(body, serial, self.settings, received_at))
        if (query.table or "").upper() == "OPTIONS":
            options = adms.parse_options(body.data)
            logger.info("device %s options: %s", serial, ", ".join(f"{k}={v}" for k, v in options.items())[:500])
        try:
            outcome = upload_outcome(
                query.table, body.data, serial, self._known(serial), self.settings, received_at
            )
        except Exception as exc:  # a parser bug must not lose the batch nor make it loop forever
            logger.exception("device %s: cannot process table %s; body quarantined", serial, query.table)
            record = quarantine(
                Reason.MALFORMED_LINE, f"internal error while parsing: {exc!r}", Stage.PUSH,
                body.data[:QUARANTINE_HEAD_BYTES], device_serial=serial, original_size=body.size, now=received_at,
            )
            outcome = _quarantined(self.settings, serial, [record], f"OK: {adms.count_lines(body.data)}")
        return await self._commit(serial, query.table, outcome)

    async def _commit(self, serial: str, table: str | None, outcome: Outcome) -> web.Response:
        if outcome.records:
            try:
                # In a thread: the fsync must not stall other devices' requests.
                await asyncio.to_thread(self.spool.append, outcome.records)
            except SpoolError as exc:
                logger.error("device %s: batch refused, spool unavailable: %s", serial, exc)
                return text_reply("FAIL: server storage unavailable, retry later", 503)
            self.publisher.wake()
        self.metrics.upload(outcome.punches, outcome.reasons)
        name = (table or "<none>").upper()
        self.stats.tables[name] += 1
        counts = self.stats.device(serial)
        counts.update(uploads=1, punches=outcome.punches, quarantined=outcome.quarantined)
        logger.info(
            "device %s table %s: %d punches, %d quarantined -> %s",
            serial, name, outcome.punches, outcome.quarantined, outcome.reply,
        )
        return text_reply(outcome.reply, outcome.status)

    def _handshake(self, serial: str, query: adms.DeviceQuery) -> web.Response:
        device = self._known(serial)
        tz = (device.timezone or self.settings.devices.default_timezone) if device else None
        self.stats.device(serial)["handshakes"] += 1
        logger.info("device %s handshake (pushver %s, registered %s)", serial, query.pushver, device is not None)
        return text_reply(adms.handshake_body(serial, self.settings.push, tz, now=datetime.now(UTC)))

    def _known(self, serial: str) -> DeviceInfo | None:
        device = self.registry.lookup(serial)
        if (device is None or not device.enabled) and serial not in self.stats.warned:
            if len(self.stats.warned) < _MAX_TRACKED_DEVICES:
                self.stats.warned.add(serial)
            state = "not in the registry" if device is None else "disabled"
            logger.warning("device %s is %s: its punches go to the dead-letter topic", serial, state)
        return device

    async def getrequest(self, request: web.Request) -> web.Response:
        query = adms.parse_query(request.query_string)
        serial = _require_serial(query)
        self.stats.device(serial)["polls"] += 1
        if query.info:
            logger.debug("device %s info: %s", serial, query.info)
        return text_reply("OK")  # no command queue yet

    async def devicecmd(self, request: web.Request) -> web.Response:
        serial = _require_serial(adms.parse_query(request.query_string))
        body = await read_body(request, self.settings.push.max_body_bytes)
        results = adms.parse_devicecmd(body.data)
        summary = ", ".join(f"{r.command_id}:{r.command}={r.return_code}" for r in results)
        logger.info("device %s command results: %s", serial, summary or "(none)")
        return text_reply("OK")

    async def ping(self, request: web.Request) -> web.Response:
        _require_serial(adms.parse_query(request.query_string))
        return text_reply("OK")

    async def other(self, request: web.Request) -> web.Response:
        query = adms.parse_query(request.query_string)
        logger.info("device %s: unhandled %s %s answered OK", query.serial, request.method, request.path)
        return text_reply("OK")

    async def healthz(self, request: web.Request) -> web.Response:
        oldest = await asyncio.to_thread(self.spool.oldest_age_s)
        return web.json_response(
            {
                "spool_depth": self.spool.depth(),
                "spool_oldest_age_s": oldest,
                "publisher": self.publisher.stats(),
                "registry": {"devices": len(self.registry), "healthy": self.registry.healthy},
                "tables": dict(self.stats.tables),
                "devices": {serial: dict(counts) for serial, counts in self.stats.devices.items()},
            }
        )


class _BadRequest(Exception):
    """A request that cannot be attributed to a device (400)."""


def _require_serial(query: adms.DeviceQuery) -> str:
    if query.serial is None:
        raise _BadRequest("FAIL: missing SN query parameter")
    if not adms.valid_serial(query.serial):
        raise _BadRequest(f"FAIL: SN {query.serial[:80]!r} is not a valid serial number")
    return query.serial


def _guarded(handler: Handler, answered: Callable[[web.Request, int], None]) -> Handler:
    """Answer every request: 400 for unattributable ones, 500 after an unexpected error;
    tell ``answered`` the status of each.

    Parse errors never get here (they are quarantined); what does is a failure around storage,
    and then the device must keep its batch: an error reply is the only safe answer.
    """

    async def guarded(request: web.Request) -> web.Response:
        try:
            response = await handler(request)
        except _BadRequest as exc:
            logger.warning("%s %s from %s: %s", request.method, request.path_qs[:200], request.remote, exc)
            response = text_reply(str(exc), 400)
        except Exception:
            logger.exception("%s %s from %s failed", request.method, request.path_qs[:200], request.remote)
            response = text_reply("FAIL: internal error, retry later", 500)
        answered(request, response.status)
        return response

    return guarded


def _count_request(metrics: PushMetrics, endpoint: str, request: web.Request, status: int) -> None:
    metrics.request(endpoint, adms.parse_query(request.query_string).table, status)


ENDPOINT = web.AppKey("push_endpoint", PushEndpoint)


def make_app(
    settings: Settings, spool: Spool, registry: Registry, publisher: PublisherLike,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    """The aiohttp application; every /iclock/* route reads the raw body itself (§12).

    GET /metrics serves ``metrics_registry`` (default: a fresh one) in Prometheus text format.
    """
    metrics_registry = metrics_registry or new_registry()
    metrics = PushMetrics(metrics_registry)
    endpoint = PushEndpoint(settings, spool, registry, publisher, metrics)
    collect_with(metrics_registry, lambda: publishing_metrics("push", spool, publisher))
    collect_with(metrics_registry, lambda: devices_metrics(lambda: len(endpoint.stats.devices), lambda: len(registry)))
    app = web.Application()
    app[ENDPOINT] = endpoint
    routes = {
        "cdata": endpoint.cdata,
        "getrequest": endpoint.getrequest,
        "devicecmd": endpoint.devicecmd,
        "ping": endpoint.ping,
    }
    # Any method: firmware differs in GET vs POST, and a 405 would only make it retry.
    for name, handler in routes.items():
        app.router.add_route("*", f"/iclock/{name}", _guarded(handler, partial(_count_request, metrics, name)))
    app.router.add_route("*", "/iclock/{tail:.*}", _guarded(endpoint.other, partial(_count_request, metrics, "other")))
    app.router.add_get("/healthz", endpoint.healthz)
    app.router.add_get("/metrics", aiohttp_handler(metrics_registry, off_loop=True))
    return app


async def run_push(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve devices until SIGINT/SIGTERM (or ``stop``); then drain and close cleanly."""
    spool = Spool(settings.path("spool", "push.sqlite3"))
    registry = Registry(
        postgres_loader(settings.postgres.effective_dsn()),
        snapshot_path=settings.path("registry", "devices.json"),
        refresh_s=settings.devices.registry_refresh_s,
    )
    publisher = Publisher(spool, settings)
    try:
        await asyncio.to_thread(registry.start)  # first refresh may wait for a connect timeout
        publisher.start()
        await _serve(make_app(settings, spool, registry, publisher), settings, stop or asyncio.Event())
    finally:
        await asyncio.to_thread(publisher.stop)
        registry.stop()
        spool.close()


async def _serve(app: web.Application, settings: Settings, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, access_log=None)  # one log line per upload is ours to write
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        await web.TCPSite(runner, settings.push.host, settings.push.port).start()
        logger.info("push endpoint listening on %s:%d", settings.push.host, settings.push.port)
        freeze_startup_heap("push endpoint")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping the push endpoint")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
