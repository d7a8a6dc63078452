"""Network side of one emulated terminal: a TCP listener and a UDP endpoint on the same port.

Sessions are asyncio protocol callbacks, not tasks: an idle device costs two sockets and a few
objects, which is what lets one process host a thousand of them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from emulator import protocol
from emulator.device import Device
from emulator.session import Session

logger = logging.getLogger(__name__)

BIND_ATTEMPTS = 20  # with port 0, retries until the TCP port's UDP twin is free too
UDP_IDLE_S = 600.0  # a UDP peer silent this long (and not live) is forgotten
UDP_ACK_WAIT_S = 60.0  # a live UDP peer that has not acknowledged an event this long is gone


class TcpSession(Session, asyncio.Protocol):
    """One TCP connection (pyzk's probe connections included: they just close)."""

    def __init__(self, host: DeviceServer) -> None:
        super().__init__(host)
        self._server = host
        self._transport: asyncio.Transport | None = None
        self._deframer = protocol.TcpDeframer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.device.counters["connections_total"] += 1
        if self.device.rebooting:  # the terminal is "off": refuse at once
            self.closed = True
            transport.abort()
            return
        self._server.sessions.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # replies are single small writes; do not let Nagle hold them
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            for raw in self._deframer.feed(data):
                self.handle(raw)
                if self.closed:
                    return
        except protocol.ProtocolError as exc:
            self.device.counters["bad_packets"] += 1
            logger.info("device %s: closing TCP client: %s", self.device.serial, exc)
            self.close(abort=True)
        except Exception:  # a bug of ours must cost one connection, not the process
            logger.exception("device %s: error handling a TCP packet", self.device.serial)
            self.close(abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.close()

    def _write(self, wire: bytes) -> None:
        if self._transport is not None:
            self._transport.write(wire)

    def _frame(self, pkt: bytes, length: int | None = None) -> bytes:
        return protocol.tcp_frame(pkt, length=length)

    def _close_transport(self, abort: bool) -> None:
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()


class UdpSession(Session):
    """The session of one UDP peer address; ends with CMD_EXIT, a fault, or idleness."""

    udp = True

    def __init__(self, host: DeviceServer, addr: Any) -> None:
        super().__init__(host)
        self._server = host
        self.addr = addr
        self.last_seen = host.loop.time()

    def _write(self, wire: bytes) -> None:
        if self._server.udp_transport is not None:
            self._server.udp_transport.sendto(wire, self.addr)

    def _frame(self, pkt: bytes, length: int | None = None) -> bytes:
        # no length field on UDP: a wrong-length reply is a datagram cut short instead
        return pkt if length is None else pkt[:length]

    def _close_transport(self, abort: bool) -> None:
        self._server.udp_sessions.pop(self.addr, None)


class UdpEndpoint(asyncio.DatagramProtocol):
    """Routes datagrams to the UdpSession of their source address."""

    def __init__(self, host: DeviceServer) -> None:
        self.host = host

    def datagram_received(self, data: bytes, addr: Any) -> None:
        host = self.host
        if host.device.rebooting:
            return
        session = host.udp_sessions.get(addr)
        if session is None:
            session = UdpSession(host, addr)
            host.udp_sessions[addr] = session
            host.sessions.add(session)
            host.device.counters["connections_total"] += 1
        session.last_seen = host.loop.time()
        try:
            session.handle(data)
        except protocol.ProtocolError as exc:
            host.device.counters["bad_packets"] += 1
            logger.info("device %s: dropping UDP datagram from %s: %s", host.device.serial, addr, exc)
        except Exception:
            logger.exception("device %s: error handling a UDP datagram", host.device.serial)
            session.close(abort=True)

    def error_received(self, exc: Exception) -> None:
        logger.debug("device %s: UDP error %s", self.host.device.serial, exc)


class DeviceServer:
    """Binds one device to TCP+UDP ``port``, owns its sessions, emulates reboots."""

    def __init__(self, device: Device, host: str, loop: asyncio.AbstractEventLoop) -> None:
        self.device = device
        self.host = host
        self.loop = loop
        self.port = device.config.port
        self.sessions: set[Session] = set()
        self.udp_sessions: dict[Any, UdpSession] = {}
        self.udp_transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._up_timer: asyncio.TimerHandle | None = None
        self._next_id = device.rng.randrange(0x1000, 0xF000)

    async def start(self) -> None:
        """Bind TCP and UDP on the same port number (a free one when configured as 0)."""
        for attempt in range(BIND_ATTEMPTS if self.port == 0 else 1):
            tcp = await self.loop.create_server(lambda: TcpSession(self), self.host, self.port,
                                                reuse_address=True)
            port = int(tcp.sockets[0].getsockname()[1])
            try:
                transport, _ = await self.loop.create_datagram_endpoint(
                    lambda: UdpEndpoint(self), local_addr=(self.host, port))
            except OSError:
                tcp.close()
                await tcp.wait_closed()
                if self.port != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self._tcp, self.port = tcp, port
            self.udp_transport = transport
            self.device.options["IPAddress"] = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
            return

    async def close(self) -> None:
        """Close every session and both listeners."""
        if self._up_timer is not None:
            self._up_timer.cancel()
        for session in list(self.sessions):
            session.close(abort=True)
        if self.udp_transport is not None:
            self.udp_transport.close()
            self.udp_transport = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    # -- Host protocol for sessions ----------------------------------------------------------
    def other_open_sessions(self, session: Session) -> int:
        """Open (connected and authenticated) sessions besides ``session``."""
        return sum(1 for s in self.sessions if s is not session and s.state == "open")

    def new_session_id(self) -> int:
        """A per-connection session id; never 0 (pyzk's 'not connected') and never 1 (events)."""
        self._next_id = self._next_id + 1 if self._next_id < 0xFFFE else 2
        return self._next_id

    def forget(self, session: Session) -> None:
        """Drop a closed session from the books."""
        self.sessions.discard(session)

    def reboot(self, down_s: float, keep: Session | None = None) -> None:
        """Drop all sessions, refuse clients for ``down_s``, come back with log and clock intact.

        ``keep`` (the session that sent CMD_RESTART) is closed gracefully so its ACK arrives.
        """
        self.device.rebooting = True
        self.device.counters["reboots"] += 1
        for session in list(self.sessions):
            session.close(abort=session is not keep)
        self.device.faults.silent_until = 0.0
        if self._up_timer is not None:
            self._up_timer.cancel()
        self._up_timer = self.loop.call_later(down_s, self._come_up)
        logger.info("device %s rebooting for %.1f s", self.device.serial, down_s)

    def _come_up(self) -> None:
        self._up_timer = None
        self.device.rebooting = False
        logger.info("device %s is back", self.device.serial)

    def sweep(self) -> None:
        """Forget UDP peers that went away without CMD_EXIT."""
        now = self.loop.time()
        for session in list(self.udp_sessions.values()):
            idle = now - session.last_seen
            if (session.awaiting_ack and idle > UDP_ACK_WAIT_S) or (not session.live_mask and idle > UDP_IDLE_S):
                logger.debug("device %s: UDP peer %s expired", self.device.serial, session.addr)
                session.close()
