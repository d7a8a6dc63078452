"""Helpers for driving the emulator with unmodified pyzk from tests and benchmarks.

pyzk's ``ZK()`` opens a UDP socket in its constructor and ``connect()`` replaces it without
closing it; under ``-W error`` the garbage-collected socket's ResourceWarning fails a test. These
helpers close pyzk's sockets deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from zk import ZK

HOST = "127.0.0.1"


def _close(client: Any) -> None:
    client._ZK__sock.close()  # pyzk keeps its socket private (name-mangled) and never closes it


@contextmanager
def pyzk(port: int, *, password: int = 0, udp: bool = False, timeout: float = 5, host: str = HOST) -> Iterator[Any]:
    """An unconnected pyzk client (ping skipped); its socket is closed on exit."""
    client = ZK(host, port=port, timeout=timeout, password=password, force_udp=udp, ommit_ping=True)
    _close(client)
    try:
        yield client
    finally:
        _close(client)


@contextmanager
def connected(port: int, *, password: int = 0, udp: bool = False, timeout: float = 5,
              host: str = HOST) -> Iterator[Any]:
    """A pyzk connection (``ZK.connect()``'s result); the socket is closed on exit."""
    with pyzk(port, password=password, udp=udp, timeout=timeout, host=host) as client:
        yield client.connect()


def live_events(conn: Any, on_idle: Callable[[int], object], *, want: int, new_timeout: float = 0.3,
                max_idle: int = 40) -> list[Any]:
    """Run pyzk's ``live_capture`` until ``want`` events arrived or ``max_idle`` idle timeouts.

    ``on_idle(n)`` is called at every idle timeout with the number of events so far (the place
    to make a punch happen); the capture is ended the way pyzk documents (end_live_capture).
    """
    events: list[Any] = []
    idle = 0
    for event in conn.live_capture(new_timeout=new_timeout):
        if event is None:
            idle += 1
            if idle >= max_idle:
                conn.end_live_capture = True
            else:
                on_idle(len(events))
            continue
        events.append(event)
        if len(events) >= want:
            conn.end_live_capture = True
    return events
