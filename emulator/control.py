"""HTTP control API of a running emulator (aiohttp, JSON): stats, records, punches, faults.

    GET  /devices                              stats per serial
    GET  /devices/{serial}                     stats of one device
    GET  /devices/{serial}/records?generated=1 the log (or every punch ever) with event ids
    POST /devices/{serial}/punch               {user_code?, state?} -> the record
    POST /devices/{serial}/faults              {kind, count?, on_command?, skip?, duration_s?}
    POST /devices/{serial}/reboot              {down_s?}
    POST /rate                                 {rate_per_s, serial?}

Unknown serial -> 404, bad body -> 400, a refused punch -> 409; errors are {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from emulator.device import LogRecord, RecordExport
from emulator.fleet import Fleet
from schemas.punch import compute_event_id

logger = logging.getLogger(__name__)

FLEET: web.AppKey[Fleet] = web.AppKey("fleet", Fleet)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def record_json(serial: str, record: LogRecord) -> dict[str, object]:
    """A record as the API returns it, with the event id the pipeline will compute."""
    return {
        "index": record.index, "uid": record.uid, "user_code": record.user_code,
        "device_time": record.device_time.isoformat(), "state": record.state, "verify": record.verify,
        "event_id": str(compute_event_id(serial, record.user_code, record.device_time, record.state)),
        "recorded_at": record.recorded_at,
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except KeyError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))


async def _body(request: web.Request) -> dict[str, Any]:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{name} has the wrong type: {value!r}")


async def _devices(request: web.Request) -> web.Response:
    return web.json_response(request.app[FLEET].stats())


async def _device(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    request.app[FLEET].device(serial)
    return web.json_response(request.app[FLEET].stats()[serial])


async def _records(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    generated = request.query.get("generated", "0").lower() in ("1", "true", "yes")
    export = request.app[FLEET].export(serial, generated=generated)

    def build(export: RecordExport) -> list[dict[str, object]]:
        return [record_json(serial, r) for r in export.decode()]

    # decoding 100,000 records takes a while: keep the devices answering meanwhile
    return web.json_response(await asyncio.to_thread(build, export))


async def _punch(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    body = await _body(request)
    record = request.app[FLEET].punch(serial, user_code=_get(body, "user_code", str), state=_get(body, "state", int))
    if record is None:
        return _error(409, "punch refused (rebooting, log full with on_full=stop, or duplicate)")
    return web.json_response(record_json(serial, record))


async def _faults(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    body = await _body(request)
    kind = _get(body, "kind", str)
    if kind is None:
        raise ValueError("kind is required")
    request.app[FLEET].inject(
        serial, kind, count=_get(body, "count", int, 1), on_command=_get(body, "on_command", int),
        skip=_get(body, "skip", int, 0), duration_s=float(_get(body, "duration_s", (int, float), 5.0)),
    )
    return web.json_response({"armed": kind, "serial": serial})


async def _reboot(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    body = await _body(request)
    down_s = float(_get(body, "down_s", (int, float), 3.0))
    request.app[FLEET].reboot(serial, down_s=down_s)
    return web.json_response({"rebooting": serial, "down_s": down_s})


async def _rate(request: web.Request) -> web.Response:
    body = await _body(request)
    rate = _get(body, "rate_per_s", (int, float))
    if rate is None:
        raise ValueError("rate_per_s is required")
    serial = _get(body, "serial", str)
    request.app[FLEET].set_rate(float(rate), serial)
    return web.json_response({"rate_per_s": float(rate), "serial": serial})


def make_app(fleet: Fleet) -> web.Application:
    """The control application for ``fleet`` (which must run in the same event loop)."""
    app = web.Application(middlewares=[_errors])
    app[FLEET] = fleet
    app.router.add_get("/devices", _devices)
    app.router.add_get("/devices/{serial}", _device)
    app.router.add_get("/devices/{serial}/records", _records)
    app.router.add_post("/devices/{serial}/punch", _punch)
    app.router.add_post("/devices/{serial}/faults", _faults)
    app.router.add_post("/devices/{serial}/reboot", _reboot)
    app.router.add_post("/rate", _rate)
    return app


async def start_control(fleet: Fleet, host: str, port: int) -> web.AppRunner:
    """Serve the control API; the caller cleans the returned runner up."""
    runner = web.AppRunner(make_app(fleet), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("emulator control API on http://%s:%d/devices", host, port)
    return runner
