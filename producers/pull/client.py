"""One connection to one pull device, through unmodified pyzk; every failure is a DeviceError.

pyzk raises its own errors for protocol refusals, ``OSError`` for the network, and — from inside
its parsers, on bytes it did not expect — ``struct.error``, ``ValueError``, ``TypeError``,
``IndexError`` or ``UnboundLocalError`` (live capture, pyzk #86/#114). All of them mean the same
thing to the producer: this connection is finished, reconnect later. They are translated here,
at the driver boundary, so the rest of the producer knows one error.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from zk import ZK, const
from zk.exception import ZKError

from producers.pull.records import Entry, live_entry, parse_log
from producers.registry import DeviceInfo
from schemas.punch import resolve_utc
from tapstream.errors import DeviceError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Exceptions pyzk lets escape on network trouble or bytes it cannot parse.
DRIVER_ERRORS = (ZKError, OSError, struct.error, ValueError, TypeError, IndexError, KeyError, UnboundLocalError)


@dataclass(frozen=True)
class DeviceFacts:
    """What the device says about itself (refreshed every few minutes)."""

    serial: str
    firmware: str
    platform: str
    users: int
    users_capacity: int
    records: int
    records_capacity: int
    clock_offset_s: float  # device clock minus true time


ZKFactory = Callable[..., Any]


class PullClient:
    """A pyzk session with a device; ``timeout_s`` bounds every request (seconds)."""

    def __init__(self, device: DeviceInfo, timeout_s: float, *, zk_factory: ZKFactory = ZK) -> None:
        self.device = device
        self._zk = zk_factory(
            device.address, port=device.pull_port, timeout=timeout_s, password=device.comm_key,
            force_udp=device.transport == "udp",
            ommit_ping=True,  # ping needs a shell and ICMP; the protocol exchange tells us enough
        )
        self.where = device.where
        self.close()  # pyzk opens a socket in its constructor and another in connect(): drop the first

    def connect(self) -> None:
        """Open the session (and authenticate with the comm key when the device asks)."""
        self._call("connect", self._zk.connect)

    def facts(self, timezone: str) -> DeviceFacts:
        """Serial, firmware, platform, counts and the clock offset (device wall clock in ``timezone``)."""
        serial = self._call("read the serial number", self._zk.get_serialnumber)
        firmware = self._call("read the firmware version", self._zk.get_firmware_version)
        platform = self._call("read the platform", self._zk.get_platform)
        self._call("read the memory counts", self._zk.read_sizes)
        before = datetime.now(UTC)
        device_time = self._call("read the clock", self._zk.get_time)
        after = datetime.now(UTC)
        middle = before + (after - before) / 2  # the device read its clock about then
        # The clock is read in whole seconds: its true reading lies in [t, t + 1), centre it.
        offset = (resolve_utc(device_time, timezone) - middle).total_seconds() + 0.5
        zk = self._zk
        return DeviceFacts(
            str(serial), str(firmware), str(platform), int(zk.users), int(zk.users_cap),
            int(zk.records), int(zk.rec_cap), round(offset, 3),
        )

    def download(self) -> list[Entry]:
        """The whole attendance log, oldest first, parsed record by record."""
        self._call("read the memory counts", self._zk.read_sizes)
        count = int(self._zk.records)
        if count == 0:
            return []
        buffer, _size = self._call("download the log", lambda: self._zk.read_with_buffer(const.CMD_ATTLOG_RRQ))
        uid_codes = None
        if len(buffer) >= 4 and struct.unpack_from("<I", buffer)[0] == 8 * count:
            # 8-byte records carry the internal user number only: map it to the PIN.
            users = self._call("read the users", self._zk.get_users)
            uid_codes = {int(user.uid): str(user.user_id) for user in users}
        try:
            return parse_log(bytes(buffer), count, uid_codes)
        except ValueError as exc:
            raise DeviceError(f"{self.where}: unreadable log: {exc}") from exc

    def live(self, tick_s: float) -> Iterator[Entry | None]:
        """Live events as they come; None every ``tick_s`` seconds without one (check the clock).

        Call ``end_live`` and keep iterating to leave cleanly; the generator ends after pyzk's
        next wake-up.
        """
        events = self._call("start live capture", lambda: self._zk.live_capture(new_timeout=tick_s))
        while True:
            try:
                event = next(events)
            except StopIteration:
                return
            except DRIVER_ERRORS as exc:
                raise DeviceError(f"{self.where}: live capture failed: {_describe(exc)}") from exc
            if event is None:
                yield None
            else:
                yield live_entry(event.user_id, event.timestamp, event.status, event.punch)

    def end_live(self) -> None:
        """Ask live capture to stop at its next wake-up."""
        self._zk.end_live_capture = True

    def close(self) -> None:
        """Drop the connection without a goodbye (it may be in any state); safe to call twice."""
        sock = getattr(self._zk, "_ZK__sock", None)  # pyzk has no close that skips CMD_EXIT
        if sock is not None:
            sock.close()
        self._zk.is_connect = False

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DRIVER_ERRORS as exc:
            raise DeviceError(f"{self.where}: cannot {what}: {_describe(exc)}") from exc


def check_identity(facts: DeviceFacts, device: DeviceInfo, where: str) -> None:
    """Refuse a device answering with another serial than the registry's (raises DeviceError)."""
    if facts.serial != device.serial:
        raise DeviceError(
            f"{where} answers as serial {facts.serial!r}, registered as {device.serial!r}: "
            "check the address in the registry (DHCP may have moved the device)"
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ZKError | OSError) else f"{type(exc).__name__}: {text}"
