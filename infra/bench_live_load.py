"""The tap generator of `tapstream bench live`: emulated push devices POSTing ATTLOG uploads.

Each upload is sent at its planned time (infra.bench_live_plan.uploads) as a task of its own,
so a slow reply never delays the next device's upload; how late each one was actually sent is
measured (``upload_lag_ms``), so a generator that could not keep up shows in the figures
instead of hiding in them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from infra.bench_live_plan import Histogram, Upload, percentiles
from tapstream.errors import TapstreamError

logger = logging.getLogger(__name__)

HEADERS = {"User-Agent": "iClock Proxy/1.09"}


@dataclass(frozen=True)
class Played:
    """What the endpoint acknowledged: punches, failed uploads, the span (s) and send lags."""

    acked: int
    failed: int
    span_s: float
    lag: Histogram


def attlog_path(serial: str) -> str:
    return f"/iclock/cdata?SN={serial}&table=ATTLOG&Stamp=9999"


async def handshake(base_url: str, serials: list[str]) -> None:
    """Each device's first request: the options handshake (the endpoint answers its settings)."""
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        for serial in serials:
            async with session.get(f"{base_url}/iclock/cdata?SN={serial}&options=all&pushver=2.4.1") as reply:
                if reply.status != 200:
                    raise TapstreamError(f"handshake of {serial}: HTTP {reply.status}")


async def post_one(session: aiohttp.ClientSession, base_url: str, serial: str, body: bytes, lines: int) -> bool:
    """POST one ATTLOG body; True when the endpoint acknowledged every line (``OK: n``)."""
    try:
        async with session.post(base_url + attlog_path(serial), data=body) as reply:
            text = await reply.text()
            if reply.status == 200 and text.strip() == f"OK: {lines}":
                return True
            logger.warning("upload of %s: HTTP %d %r", serial, reply.status, text[:80])
    except (aiohttp.ClientError, OSError) as exc:
        logger.warning("upload of %s: %s", serial, exc)
    return False


async def play(base_url: str, plan: list[Upload], start: float) -> Played:
    """Send every upload at its time; wait for all replies; what was acknowledged."""
    lag: Histogram = Histogram()
    connector = aiohttp.TCPConnector(limit=0)  # one connection per in-flight upload, as devices do
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=HEADERS) as session:
        tasks: list[asyncio.Task[bool]] = []
        for upload in plan:
            delay = upload.at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag[int(max(0.0, time.time() - upload.at) * 1000)] += 1
            tasks.append(asyncio.create_task(
                post_one(session, base_url, upload.serial, upload.body(), len(upload.taps))))
        oks = await asyncio.gather(*tasks)
        span = time.time() - start
    acked = sum(len(u.taps) for u, ok in zip(plan, oks) if ok)
    failed = sum(1 for ok in oks if not ok)
    if failed:
        logger.warning("%d of %d uploads failed", failed, len(plan))
    return Played(acked, failed, span, lag)


def lag_figures(played: Played) -> dict[str, float | int | None]:
    """How late uploads were sent against their plan (ms): p50 ... max."""
    return percentiles(played.lag)
