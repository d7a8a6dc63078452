"""One emulated terminal's state: identity, users, attendance log, clock, faults. No I/O.

The log is kept as the device would store it: records already encoded in the configured
format, appended to one buffer that also holds every wrapped-away or cleared record. The log as
it stands is the tail ``[log_start, count)`` of that history, so a punch costs O(1), a
snapshot for a bulk read is one memcpy and wrap-around is moving ``log_start``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from emulator import protocol
from emulator.faults import FaultKind as FaultKind
from emulator.faults import FaultPlan
from emulator.records import LogRecord as LogRecord
from emulator.records import RecordExport, Snapshot, UserTable

logger = logging.getLogger(__name__)

RECORDED_AT_KEPT = 100_000  # per device: punch times kept for latency measurements

__all__ = ["Device", "DeviceConfig", "FaultKind", "LogRecord", "RecordExport", "Snapshot"]

PREFERRED_STATES = (0, 1, 4, 5, 2, 3)  # in, out, OT-in, OT-out, break-out, break-in
# a user punching more often than the distinct states allow in one second moves on to the
# next seconds; "now" punches that fall within this window behind it continue from there
BUMP_WINDOW = timedelta(seconds=60)
PRELOAD_SPAN_S = 7 * 86400  # preloaded logs end a minute ago and reach back about a week


@dataclass
class DeviceConfig:
    """Everything that defines one emulated terminal; only ``serial`` is required."""

    serial: str
    port: int = 0  # 0: pick a free port (TCP and UDP on the same number)
    users: int = 50  # user codes "1001", "1002", ...
    log_size: int = 0  # records preloaded into the log, spread over the past days
    capacity: int = 100_000  # attendance log capacity
    on_full: str = "wrap"  # "wrap" (drop the oldest) | "stop" (refuse new punches)
    rate_per_s: float = 0.0  # automatic punches per second
    clock_offset_s: float = 0.0  # device clock minus true time
    timezone: str = "UTC"  # IANA zone of the device wall clock
    comm_key: int = 0  # non-zero: CMD_CONNECT answered CMD_ACK_UNAUTH, CMD_AUTH verified
    single_session: bool = False  # refuse a second concurrent session
    record_format: int = 40  # 40 | 16 | 8 byte attendance records
    user_format: int = 72  # 72 | 28 byte users
    firmware: str = "Ver 6.60 Apr 28 2015"
    platform: str = "ZEM600_TFT"
    device_name: str = "TapEmu"
    mac: str = ""  # derived from the serial when empty
    users_capacity: int = 10_000
    verify_mode: int = 1  # verify code of generated punches (1 = fingerprint)
    reboot_s: float = 3.0  # how long CMD_RESTART / CMD_POWEROFF keep the device away

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ValueError(f"device {self.serial!r}: " + "; ".join(problems))
        if not self.mac:
            digest = hashlib.sha1(self.serial.encode()).digest()
            self.mac = "00:17:61:" + ":".join(f"{b:02x}" for b in digest[:3])


def _config_problems(c: DeviceConfig) -> list[str]:
    checks = [
        (bool(c.serial.strip()) and len(c.serial) <= 64, "serial must be 1-64 characters"),
        (0 <= c.port <= 65535, f"port {c.port} outside 0-65535"),
        (0 <= c.users <= min(c.users_capacity, 65534), "users must be 0..min(users_capacity, 65534)"),
        (c.log_size >= 0 and c.capacity >= 1, "log_size must be >= 0 and capacity >= 1"),
        (c.on_full in ("wrap", "stop"), f"on_full {c.on_full!r} must be wrap or stop"),
        (c.rate_per_s >= 0, "rate_per_s must be >= 0"),
        (0 <= c.comm_key <= 999_999_999, "comm_key must be 0..999999999"),
        (c.record_format in protocol.RECORD_FORMATS, f"record_format {c.record_format} not 40, 16 or 8"),
        (c.user_format in protocol.USER_FORMATS, f"user_format {c.user_format} not 72 or 28"),
        (0 <= c.verify_mode <= 255, "verify_mode must be 0..255"),
        (c.reboot_s >= 0, "reboot_s must be >= 0"),
        (0 < len(c.firmware.encode()) < 1000, "firmware must be 1-999 bytes"),
    ]
    problems = [message for ok, message in checks if not ok]
    try:
        ZoneInfo(c.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"unknown IANA timezone {c.timezone!r}")
    return problems


@dataclass(slots=True)
class _Recent:
    """Per user: the latest punch second and the states used in it (uniqueness without a scan)."""

    last: datetime | None = None
    states: set[int] = field(default_factory=set)
    next_state: int = 0


class Device:
    """State of one terminal; the server layer calls it, it never touches a socket."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = dataclasses.replace(config)  # set_rate changes it; the caller's stays as given
        self.serial = config.serial
        self.rng = random.Random(config.serial)  # reproducible per serial
        self.tz = ZoneInfo(config.timezone)
        self.clock_offset_s = config.clock_offset_s
        self.users = UserTable(config.user_format, config.record_format)
        self.users.populate(config.users)
        self.faults = FaultPlan()
        self.options = _options(config)
        self.live: set[Callable[[LogRecord], None]] = set()
        self.rebooting = False
        self.enabled = True
        self.counters: dict[str, int] = dict.fromkeys(
            ("connections_total", "sessions_total", "sessions_open", "commands", "punches_refused",
             "duplicates_refused", "live_sent", "live_acked", "live_dropped", "live_silenced",
             "reboots", "bad_packets"), 0)
        self._size = config.record_format
        self._history = bytearray()
        # When each live punch happened (true time): what a tap-to-Kafka latency is measured from.
        self._recorded_at: dict[int, float] = {}
        self._count = 0
        self._log_start = 0
        self._recent: dict[int, _Recent] = {}
        self._preload(config.log_size)

    # -- clock ---------------------------------------------------------------------------
    def now(self) -> datetime:
        """The device wall clock: naive, whole seconds."""
        wall = datetime.now(self.tz).replace(tzinfo=None) + timedelta(seconds=self.clock_offset_s)
        return wall.replace(microsecond=0)

    def set_clock(self, wall: datetime) -> None:
        """Move the clock so that it reads ``wall`` now (CMD_SET_TIME)."""
        true_wall = datetime.now(self.tz).replace(tzinfo=None)
        self.clock_offset_s = (wall - true_wall).total_seconds()
        logger.info("device %s clock set to %s (offset %.0f s)", self.serial, wall, self.clock_offset_s)

    # -- the log -------------------------------------------------------------------------
    @property
    def log_count(self) -> int:
        """Records in the log as it stands."""
        return self._count - self._log_start

    @property
    def generated_count(self) -> int:
        """Every punch ever recorded, including preloaded, wrapped-away and cleared ones."""
        return self._count

    def full(self) -> bool:
        """True when the log holds ``capacity`` records."""
        return self.log_count >= self.config.capacity

    def clear_log(self) -> None:
        """CMD_CLEAR_ATTLOG: the log becomes empty; history (generated()) keeps everything."""
        self._log_start = self._count
        logger.info("device %s attendance log cleared", self.serial)

    def punch(self, user_code: str | None = None, state: int | None = None,
              at: datetime | None = None) -> LogRecord | None:
        """Record a punch now (or at device wall clock ``at``) and hand it to live sessions.

        Returns None when refused: rebooting, log full with on_full="stop", no users, or an
        explicit ``at`` whose (user, second, state) is already taken. Raises ValueError for a
        user code the record format cannot hold, a state above 255 or a year outside 2000-2099.
        """
        if state is not None and not 0 <= state <= 255:
            raise ValueError(f"state {state} is not a byte")
        if at is not None and not 2000 <= at.year <= 2099:
            raise ValueError("device clocks hold years 2000-2099 only")
        if self.rebooting or (self.full() and self.config.on_full == "stop"):
            self.counters["punches_refused"] += 1
            return None
        uid = self.users.uid_for(user_code) if user_code is not None else self._pick_uid()
        if uid is None:
            return None
        exact = at is not None
        t = at.replace(tzinfo=None, microsecond=0) if at is not None else self.now()
        slot = self._free_slot(uid, t, state, exact=exact)
        if slot is None:
            self.counters["duplicates_refused"] += 1
            return None
        record = self._append(uid, *slot)
        now = time.time()
        self._recorded_at[record.index] = now
        if len(self._recorded_at) > RECORDED_AT_KEPT:
            del self._recorded_at[next(iter(self._recorded_at))]  # the oldest: bounded memory
        record = dataclasses.replace(record, recorded_at=now)
        for deliver in list(self.live):
            deliver(record)
        return record

    def _pick_uid(self) -> int | None:
        """A random user who has not punched this second yet, if one is found quickly."""
        if not len(self.users):
            return None
        now = self.now()
        uid = self.users.random_uid(self.rng)
        for _ in range(8):
            recent = self._recent.get(uid)
            if recent is None or recent.last is None or recent.last < now:
                return uid
            uid = self.users.random_uid(self.rng)
        return uid

    def _free_slot(self, uid: int, t: datetime, state: int | None, *, exact: bool) -> tuple[datetime, int] | None:
        recent = self._recent.setdefault(uid, _Recent())
        prefs = (state,) if state is not None else (recent.next_state, *PREFERRED_STATES)
        if not exact and recent.last is not None and timedelta(0) < recent.last - t <= BUMP_WINDOW:
            t = recent.last  # this user already spilled into later seconds: continue from there
        if recent.last is None or t > recent.last:
            return t, prefs[0]
        if t == recent.last:
            free = [s for s in prefs if s not in recent.states]
            if free:
                return t, free[0]
            return None if exact else (t + timedelta(seconds=1), prefs[0])
        # t is earlier than this user's latest punch (clock set back, or an explicit time):
        # rare, so a search of the history (C-speed, by the packed time) is acceptable here
        for _ in range(1 if exact else int(BUMP_WINDOW.total_seconds())):
            used = {r.state for r in self._user_records_at(uid, protocol.encode_time(t))}
            free = [s for s in prefs if s not in used]
            if free:
                return t, free[0]
            t += timedelta(seconds=1)
        return None

    def _user_records_at(self, uid: int, packed: int) -> list[protocol.RawRecord]:
        code = self.users.code_of(uid)
        return [
            r for r in protocol.records_at(self._size, self._history, packed)
            if (r.uid == uid if r.uid is not None else r.user_code == code)
        ]

    def _append(self, uid: int, t: datetime, state: int) -> LogRecord:
        code = self.users.code_of(uid)
        verify = self.config.verify_mode
        self._history += protocol.encode_record(self._size, uid, code, t, state, verify)
        index = self._count
        self._count += 1
        if self.log_count > self.config.capacity:
            self._log_start += 1  # wrap: the oldest record leaves the log, never the history
        recent = self._recent.setdefault(uid, _Recent())
        if recent.last is None or t > recent.last:
            recent.last, recent.states = t, {state}
        elif t == recent.last:
            recent.states.add(state)
        if state in (0, 1):
            recent.next_state = 1 - state
        return LogRecord(index, uid, code, t, state, verify)

    def _preload(self, n: int) -> None:
        """Fill the log with ``n`` ascending, one-per-second-or-more records ending a minute ago."""
        if n <= 0 or not len(self.users):
            return
        mean = max(1, min(600, PRELOAD_SPAN_S // n))
        steps = [self.rng.randint(1, 2 * mean - 1) for _ in range(n)]
        t = self.now() - timedelta(seconds=60 + sum(steps))
        for step in steps:
            t += timedelta(seconds=step)
            if self.full() and self.config.on_full == "stop":
                self.counters["punches_refused"] += 1
                continue
            uid = self.users.random_uid(self.rng)
            recent = self._recent.setdefault(uid, _Recent())
            self._append(uid, t, recent.next_state)
        logger.debug("device %s preloaded %d records", self.serial, self._count)

    # -- reads ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Frozen users and log buffers with their counts (taken at CMD_GET_FREE_SIZES)."""
        view = memoryview(self._history)
        records = bytes(view[self._log_start * self._size : self._count * self._size])
        view.release()
        return Snapshot(self.users.blob(), len(self.users), records, self.log_count)

    def status_block(self, snap: Snapshot) -> bytes:
        """The 92-byte sizes block matching a snapshot."""
        return protocol.status_block(
            users=snap.user_count, records=snap.record_count,
            users_cap=self.config.users_capacity, records_cap=self.config.capacity,
        )

    def export(self, *, generated: bool) -> RecordExport:
        """The log (or whole history) as bytes plus the user maps, to decode off the loop."""
        first = 0 if generated else self._log_start
        data = bytes(self._history[first * self._size : self._count * self._size])
        return RecordExport(self._size, first, data, self.users.codes(), dict(self._recorded_at))

    def records(self) -> list[LogRecord]:
        """The log as it stands (after wrap and clear)."""
        return self.export(generated=False).decode()

    def generated(self) -> list[LogRecord]:
        """Every punch ever recorded by this device."""
        return self.export(generated=True).decode()

    def option(self, key: str) -> str | None:
        """CMD_OPTIONS_RRQ value for ``key``, None when the device has no such option."""
        return self.options.get(key)

    def stats(self) -> dict[str, object]:
        """Counters and state for /devices and Fleet.stats()."""
        out: dict[str, object] = dict(self.counters)
        out.update(
            punches_generated=self._count, log_records=self.log_count, log_capacity=self.config.capacity,
            users=len(self.users), live_sessions=len(self.live), faults_fired=self.faults.fired,
            faults_armed=self.faults.armed, rebooting=self.rebooting, enabled=self.enabled,
            rate_per_s=self.config.rate_per_s, clock_offset_s=round(self.clock_offset_s, 3),
        )
        return out


def _options(c: DeviceConfig) -> dict[str, str]:
    """The CMD_OPTIONS_RRQ table (§7, §15 item 4)."""
    extended = "1" if c.user_format == 72 else "0"
    return {
        "~SerialNumber": c.serial, "~Platform": c.platform, "~DeviceName": c.device_name,
        "MAC": c.mac, "~ZKFPVersion": "10", "ZKFaceVersion": "7", "~ExtendFmt": extended,
        "~UserExtFmt": extended, "FaceFunOn": "0", "CompatOldFirmware": "0",
        "IPAddress": "127.0.0.1", "NetMask": "255.255.255.0", "GATEIPAddress": "0.0.0.0",
        "~OS": "1", "~ExtendOPLog": "1", "WorkCode": "0", "~SSR": "1", "~PIN2Width": "9",
        "~OEMVendor": "ZKTeco Inc.", "~ProductTime": "2015-04-28 10:00:00", "~MaxUserCount": "100",
        "~MaxAttLogCount": str(max(1, c.capacity // 10_000)), "~IsOnlyRFMachine": "0",
    }
