"""The alert runner: every ``settings.alerts.interval_s`` read the pipeline, step the engine
(monitor.alerts), publish each alert to the ``alerts`` topic, log it, POST it to the webhook.

Nothing here blocks the event loop: the status probes, the topic reads and Kafka deliveries run in
threads; the webhook has a queue and a task of its own, so a slow or failing webhook delays
neither evaluation nor the topic. An alert whose delivery to Kafka failed is kept and sent again
the next round, in order. On start the open incidents are rebuilt from the alerts topic; until
that read succeeds nothing is evaluated (evaluating blind would re-fire open incidents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import aiohttp
from confluent_kafka import KafkaError, Message, Producer

from infra.pipeline_probes import collect_status
from infra.pipeline_status import PipelineStatus
from monitor.alerts import AlertEngine, Evaluation, alert_line, evaluate
from schemas.alert import Alert, AlertState
from schemas.codec import decode_or_none, encode
from schemas.device_status import DeviceStatus
from tapstream.errors import TapstreamError, first_line
from tapstream.settings import Settings
from tapstream.topic_tail import LatestByKey, TopicTail

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0  # a topic read to its end gives up after this long (Kafka away)
DELIVERY_TIMEOUT_S = 5.0  # an alert not delivered by then is kept for the next round
WEBHOOK_BACKOFF_S = 1.0  # first pause between webhook attempts, doubled each time
T = TypeVar("T")

DeviceStatuses = Callable[[], Mapping[str, DeviceStatus]]
PushLastSeen = Callable[[], Mapping[str, datetime]]


class LatestStatuses:
    """The latest DeviceStatus per serial of the compacted device-status topic, kept current."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._latest = LatestByKey(bootstrap, topic, DeviceStatus, READ_TIMEOUT_S)

    def __call__(self) -> dict[str, DeviceStatus]:
        # a tombstone (None): the device is gone
        return {s.device_serial: s for s in self._latest.refresh().values() if s is not None}

    def close(self) -> None:
        self._latest.close()


def read_alerts(bootstrap: str, topic: str) -> list[Alert]:
    """Every alert on the topic, oldest first."""
    tail = TopicTail(bootstrap, topic, READ_TIMEOUT_S)
    try:
        return [a for _, value in tail.read_new() if (a := decode_or_none(Alert, value, topic)) is not None]
    finally:
        tail.close()


def publish(producer: Producer, topic: str, alerts: list[Alert]) -> list[Alert]:
    """Write ``alerts`` keyed by incident and wait for delivery; return those not delivered."""
    failed: list[Alert] = []

    def delivered(alert: Alert, error: KafkaError | None, _msg: Message) -> None:
        if error is not None:
            failed.append(alert)

    for alert in alerts:
        producer.produce(topic, key=alert.key.encode(), value=encode(alert), on_delivery=partial(delivered, alert))
    # message.timeout.ms is below this wait: every callback has run when flush returns.
    producer.flush(DELIVERY_TIMEOUT_S * 2)
    undelivered = {id(a) for a in failed}
    return [a for a in alerts if id(a) in undelivered]


class Webhook:
    """POSTs alerts, one at a time in order, from its own task; a failure is logged, never raised."""

    def __init__(self, url: str, timeout_s: float, attempts: int) -> None:
        self._url, self._timeout_s, self._attempts = url, timeout_s, attempts
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()

    def send(self, alert: Alert) -> None:
        self._queue.put_nowait(alert)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s)) as session:
            while True:
                alert = await self._queue.get()
                try:
                    await self._post(session, alert)
                finally:
                    self._queue.task_done()

    async def drain(self, within_s: float) -> None:
        """Wait up to ``within_s`` for the queued alerts to be posted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), within_s)

    async def _post(self, session: aiohttp.ClientSession, alert: Alert) -> bool:
        why = ""
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.post(self._url, json=alert.model_dump(mode="json")) as response:
                    if response.status < 300:
                        return True
                    why = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {first_line(exc)}"
            if attempt < self._attempts:
                await asyncio.sleep(WEBHOOK_BACKOFF_S * 2 ** (attempt - 1))
        # The URL may carry a token: it is not logged.
        logger.error("webhook: gave up on %s %s after %d attempts: %s", alert.key, alert.state.value,
                     self._attempts, why)
        return False


class AlertRunner:
    """Evaluates the alert conditions on a timer and publishes what the engine raises.

    ``device_statuses`` and ``push_last_seen`` are called on the event loop and must not block;
    without ``device_statuses`` the runner reads ``settings.topics.device_status`` itself, and
    without ``push_last_seen`` push devices are not watched. ``collect`` replaces the status
    probes (tests).
    """

    def __init__(
        self,
        settings: Settings,
        device_statuses: DeviceStatuses | None = None,
        push_last_seen: PushLastSeen | None = None,
        *,
        collect: Callable[[], PipelineStatus] | None = None,
    ) -> None:
        self._settings = settings
        self._engine = AlertEngine(resolve_after=settings.alerts.resolve_after_checks)
        self._own_statuses: LatestStatuses | None = None
        self._device_statuses = device_statuses
        self._push_last_seen = push_last_seen
        self._collect = collect or partial(collect_status, settings)
        self._restored = False
        self._outbox: list[Alert] = []
        self._unread: dict[str, str] = {}  # source -> why, to log a source's trouble once

    def open_alerts(self) -> list[Alert]:
        """The firing event of every open incident, oldest first."""
        return self._engine.open_alerts()

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval_s`` until ``stop`` is set."""
        s = self._settings
        producer = Producer({"bootstrap.servers": s.kafka.bootstrap, "enable.idempotence": True,
                             "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)})
        url = s.alerts.webhook_url
        webhook = None if url is None else Webhook(
            url.get_secret_value(), s.alerts.webhook_timeout_s, s.alerts.webhook_attempts)
        posting = asyncio.create_task(webhook.run()) if webhook else None
        logger.info("alerts: evaluating every %.3gs, publishing to %s%s", s.alerts.interval_s, s.topics.alerts,
                    " and the webhook" if webhook else "")
        try:
            while not stop.is_set():
                await self._round(producer, webhook)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.alerts.interval_s)
        finally:
            if webhook and posting:
                await webhook.drain(s.alerts.webhook_timeout_s)
                posting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await posting
            await asyncio.to_thread(producer.flush, DELIVERY_TIMEOUT_S)
            if self._own_statuses is not None:
                self._own_statuses.close()

    async def _round(self, producer: Producer, webhook: Webhook | None) -> None:
        try:
            events = await self.check()
        except TapstreamError as exc:
            logger.error("alerts: round skipped: %s", exc)
            return
        except Exception:  # noqa: BLE001 — one bad round must never end alerting
            logger.exception("alerts: round failed")
            return
        for alert in events:
            if alert.state is AlertState.FIRING:
                logger.warning("alert FIRING   %s", alert_line(alert))
            else:
                logger.info("alert resolved %s", alert_line(alert))
            if webhook is not None:
                webhook.send(alert)
        self._outbox += events
        if self._outbox:
            topic = self._settings.topics.alerts
            self._outbox = await asyncio.to_thread(publish, producer, topic, self._outbox)
            if self._outbox:
                logger.error("alerts: %d not delivered to %s, kept for the next round", len(self._outbox), topic)

    async def check(self) -> list[Alert]:
        """One evaluation: restore first if not done yet; the alerts it raises (not published)."""
        s = self._settings
        if not self._restored:
            published = await asyncio.to_thread(read_alerts, s.kafka.bootstrap, s.topics.alerts)
            self._engine.restore(published)
            self._restored = True
            logger.info("alerts: %d open incidents restored from %s", len(self.open_alerts()), s.topics.alerts)
        status = await asyncio.to_thread(self._soft, "pipeline status", self._collect)
        statuses = await self._statuses()
        push = self._soft("push devices", self._push_last_seen) if self._push_last_seen else None
        evaluation: Evaluation = evaluate(s.alerts, datetime.now(UTC), status, statuses, push, s.worker.sinks)
        return self._engine.step(evaluation)

    async def _statuses(self) -> Mapping[str, DeviceStatus] | None:
        if self._device_statuses is not None:
            return self._soft("device statuses", self._device_statuses)
        if self._own_statuses is None:
            s = self._settings
            self._own_statuses = LatestStatuses(s.kafka.bootstrap, s.topics.device_status)
        return await asyncio.to_thread(self._soft, "device statuses", self._own_statuses)

    def _soft(self, source: str, read: Callable[[], T]) -> T | None:
        """``read()``, or None (unknown) with the reason logged when it first appears."""
        try:
            value = read()
        except Exception as exc:  # noqa: BLE001 — an unreadable source is unknown, not a crash
            why = f"{type(exc).__name__}: {first_line(exc)}"
            if self._unread.get(source) != why:
                logger.warning("alerts: %s unreadable, its incidents neither fire nor resolve: %s", source, why)
            self._unread[source] = why
            return None
        if self._unread.pop(source, None) is not None:
            logger.info("alerts: %s readable again", source)
        return value
