"""One client session of an emulated terminal: commands in, reply packets out, live events.

Transport-neutral: server.py subclasses it for a TCP connection and for a UDP peer. Every
packet is answered (unknown commands with CMD_ACK_UNKNOWN) except pyzk's CMD_ACK_OK, which only
acknowledges a live event. Armed faults are applied to the reply after the command took effect.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

from emulator import protocol as p
from emulator.device import Device, LogRecord, Snapshot
from emulator.faults import FaultKind
from emulator.handlers import HANDLERS, Reply

logger = logging.getLogger(__name__)

LIVE_QUEUE = 10_000  # events queued per session before the oldest are dropped (the log keeps them)
PENDING_MAX = 256  # packets held while a STALL fault pauses the session
WRONG_LENGTH_EXTRA = 1024  # bytes a WRONG_LENGTH reply claims beyond what it carries


class Host(Protocol):
    """What a session needs from the device server that owns it."""

    device: Device
    loop: asyncio.AbstractEventLoop

    def other_open_sessions(self, session: Session) -> int: ...

    def new_session_id(self) -> int: ...

    def reboot(self, down_s: float, keep: Session | None = None) -> None: ...

    def forget(self, session: Session) -> None: ...


class Session:
    """Command state machine shared by TCP and UDP sessions."""

    udp = False

    def __init__(self, host: Host) -> None:
        self.host = host
        self.device = host.device
        self.id = host.new_session_id()
        self.state = "new"  # new -> unauth (comm key pending) -> open -> closed
        self.closed = False
        self.snapshot: Snapshot | None = None
        self.dataset: bytes | None = None
        self.live_mask = 0
        self.queue: deque[LogRecord] = deque(maxlen=LIVE_QUEUE)
        self.awaiting_ack = False
        self.paused = False
        self.pending: deque[bytes] = deque()
        self.listener = self.offer  # one bound method, so the device set can discard it
        self.after: Callable[[], None] | None = None  # set by a handler: runs once the reply is out

    # -- transport hooks (server.py) -------------------------------------------------------
    def _write(self, wire: bytes) -> None:
        raise NotImplementedError

    def _frame(self, pkt: bytes, length: int | None = None) -> bytes:
        raise NotImplementedError

    def _close_transport(self, abort: bool) -> None:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------
    def close(self, *, abort: bool = False) -> None:
        """End the session: leave live delivery, free buffers, close or forget the transport."""
        if self.closed:
            return
        self.closed = True
        if self.state == "open":
            self.device.counters["sessions_open"] -= 1
        self.state = "closed"
        self.device.live.discard(self.listener)
        self.queue.clear()
        self.pending.clear()
        self.snapshot = self.dataset = None
        self.host.forget(self)
        self._close_transport(abort)

    def handle(self, raw: bytes) -> None:
        """Process one packet from the client (held back while a STALL fault pauses us)."""
        if self.closed:
            return
        if self.paused:
            if len(self.pending) >= PENDING_MAX:
                self.close(abort=True)
            else:
                self.pending.append(raw)
            return
        self._process(raw)

    def _process(self, raw: bytes) -> None:
        pkt = p.parse_packet(raw)
        if pkt.command == p.CMD_ACK_OK:  # pyzk acknowledging a live event; never answered
            self._acked()
            return
        self.device.counters["commands"] += 1
        self.awaiting_ack = False  # any client packet releases the next event (§11.5)
        replies = self._dispatch(pkt)
        after, self.after = self.after, None
        self._emit(pkt.command, replies, after)
        self._pump_live()

    def _dispatch(self, pkt: p.Packet) -> Reply:
        if self.state != "open" and pkt.command not in (p.CMD_CONNECT, p.CMD_AUTH, p.CMD_EXIT):
            return [self.reply(pkt, p.CMD_ACK_UNAUTH)]
        handler = HANDLERS.get(pkt.command)
        if handler is None:
            return [self.reply(pkt, p.CMD_ACK_UNKNOWN)]
        try:
            return handler(self, pkt)
        except (p.ProtocolError, ValueError, struct.error) as exc:
            logger.debug("device %s: bad %d request: %s", self.device.serial, pkt.command, exc)
            return [self.reply(pkt, p.CMD_ACK_ERROR)]

    def reply(self, pkt: p.Packet, code: int, data: bytes | memoryview = b"") -> bytes:
        """A reply packet to ``pkt`` in this session (its id, the request's reply number)."""
        return p.packet(code, self.id, pkt.reply, data)

    # -- replies and faults ---------------------------------------------------------------
    def _emit(self, command: int, replies: Reply, after: Callable[[], None] | None) -> None:
        fault = self.device.faults.take(command)
        if fault is None:
            self._send(replies, after)
            return
        logger.info("device %s: fault %s on reply to %d", self.device.serial, fault.kind.value, command)
        if fault.kind is FaultKind.STALL:
            self.paused = True
            self.host.loop.call_later(fault.duration_s, self._resume, replies, after)
            return
        if fault.kind is FaultKind.DROP:
            self.close(abort=True)
        elif fault.kind is FaultKind.GARBAGE:
            self._write(self._garbage())
        elif fault.kind is FaultKind.TRUNCATE:
            wire = self._frame(replies[0])
            self._write(wire[: max(1, len(wire) // 2)])
            self.close()
        else:
            self._send_wrong_length(replies)
        if after is not None:  # the command still took effect (a lost ACK to CMD_RESTART reboots)
            after()

    def _send(self, replies: Reply, after: Callable[[], None] | None) -> None:
        for pkt in replies:
            self._write(self._frame(pkt))
        if after is not None:
            after()

    def _resume(self, replies: Reply, after: Callable[[], None] | None) -> None:
        if self.closed:
            return
        self.paused = False
        self._send(replies, after)
        while self.pending and not self.paused and not self.closed:
            self._process(self.pending.popleft())
        self._pump_live()

    def _garbage(self) -> bytes:
        rng = self.device.rng
        data = bytearray(rng.randbytes(rng.randint(16, 48)))
        data[0:2] = b"\xad\xde"  # neither the TCP magic nor a success code on UDP
        return bytes(data)

    def _send_wrong_length(self, replies: Reply) -> None:
        # the data-bearing packet (a bulk CMD_DATA when there is one) claims bytes that never
        # come: a client framing by length waits for them; on UDP the datagram is cut instead
        target = next((i for i, r in enumerate(replies) if len(r) > p.HEADER), 0)
        for i, pkt in enumerate(replies):
            wrong = len(pkt) + WRONG_LENGTH_EXTRA if not self.udp else p.HEADER + (len(pkt) - p.HEADER) // 2
            self._write(self._frame(pkt, length=wrong if i == target else None))

    # -- live events ----------------------------------------------------------------------
    def offer(self, record: LogRecord) -> None:
        """Device listener: queue a new punch for live delivery."""
        if self.closed:
            return
        if self.host.loop.time() < self.device.faults.silent_until:
            self.device.counters["live_silenced"] += 1
            return
        if len(self.queue) == self.queue.maxlen:
            self.device.counters["live_dropped"] += 1
        self.queue.append(record)
        self._pump_live()

    def _acked(self) -> None:
        if self.awaiting_ack:
            self.awaiting_ack = False
            self.device.counters["live_acked"] += 1
            self._pump_live()

    def _pump_live(self) -> None:
        """Send the next queued event unless one is still waiting for the client's packet."""
        if self.closed or self.paused or self.awaiting_ack or not self.live_mask or not self.queue:
            return
        record = self.queue.popleft()
        fault = self.device.faults.take(None)
        if fault is not None and fault.kind is FaultKind.SILENT_LIVE:
            self.device.faults.silent_until = self.host.loop.time() + fault.duration_s
            self.device.counters["live_silenced"] += 1 + len(self.queue)
            self.queue.clear()
            logger.info("device %s: live events silenced for %.1f s", self.device.serial, fault.duration_s)
            return
        if fault is not None:  # GARBAGE_LIVE: 20 bytes, a length pyzk 0.9 cannot parse
            data = self.device.rng.randbytes(20)
        else:
            data = p.realtime_attlog(record.user_code, record.device_time, record.state, record.verify,
                                     udp=self.udp)
        self._write(self._frame(p.event_packet(data)))
        self.awaiting_ack = True
        self.device.counters["live_sent"] += 1
