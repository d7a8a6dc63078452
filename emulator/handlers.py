"""Command handlers of an emulated terminal: one function per command code, returning replies.

A handler may change the session or device and may set ``session.after`` to act once its reply
is on the wire (CMD_EXIT closes, CMD_RESTART reboots).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from emulator import protocol as p

if TYPE_CHECKING:
    from emulator.session import Session

logger = logging.getLogger(__name__)

PIN_WIDTH = 9
# datasets up to this size (length prefix included) are answered inline to 1503; pyzk reads
# 1024-byte replies there, so the whole packet fits on UDP too
INLINE_MAX = 1016

Reply = list[bytes]
Handler = Callable[["Session", p.Packet], Reply]


def _ok(s: Session, pkt: p.Packet) -> Reply:
    return [s.reply(pkt, p.CMD_ACK_OK)]


def _connect(s: Session, pkt: p.Packet) -> Reply:
    cfg = s.device.config
    if s.state != "open" and cfg.single_session and s.host.other_open_sessions(s):
        logger.info("device %s: second session refused (single_session)", s.device.serial)
        return [s.reply(pkt, p.CMD_ACK_ERROR)]
    if s.state == "open":
        return _ok(s, pkt)
    if cfg.comm_key:
        s.state = "unauth"
        return [s.reply(pkt, p.CMD_ACK_UNAUTH)]
    _open(s)
    return _ok(s, pkt)


def _open(s: Session) -> None:
    s.state = "open"
    s.device.counters["sessions_open"] += 1
    s.device.counters["sessions_total"] += 1


def _auth(s: Session, pkt: p.Packet) -> Reply:
    if s.state == "open":
        return _ok(s, pkt)
    key = s.device.config.comm_key
    if s.state == "unauth" and (key == 0 or p.check_commkey(key, s.id, pkt.data)):
        if s.device.config.single_session and s.host.other_open_sessions(s):
            return [s.reply(pkt, p.CMD_ACK_ERROR)]
        _open(s)
        return _ok(s, pkt)
    logger.info("device %s: comm key rejected", s.device.serial)
    return [s.reply(pkt, p.CMD_ACK_UNAUTH)]


def _exit(s: Session, pkt: p.Packet) -> Reply:
    s.after = s.close
    return _ok(s, pkt)


def _restart(s: Session, pkt: p.Packet) -> Reply:
    s.after = lambda: s.host.reboot(s.device.config.reboot_s, keep=s)
    return _ok(s, pkt)


def _enable(s: Session, pkt: p.Packet) -> Reply:
    s.device.enabled = pkt.command == p.CMD_ENABLEDEVICE
    return _ok(s, pkt)


def _version(s: Session, pkt: p.Packet) -> Reply:
    return [s.reply(pkt, p.CMD_ACK_OK, s.device.config.firmware.encode() + b"\x00")]


def _option_read(s: Session, pkt: p.Packet) -> Reply:
    key = pkt.data.split(b"\x00", 1)[0].decode(errors="replace")
    value = s.device.option(key)
    if value is None:
        return [s.reply(pkt, p.CMD_ACK_ERROR)]
    return [s.reply(pkt, p.CMD_ACK_OK, f"{key}={value}\x00".encode())]


def _option_write(s: Session, pkt: p.Packet) -> Reply:
    key, sep, value = pkt.data.split(b"\x00", 1)[0].decode(errors="replace").partition("=")
    if not sep or not key:
        return [s.reply(pkt, p.CMD_ACK_ERROR)]
    s.device.options[key] = value
    return _ok(s, pkt)


def _sizes(s: Session, pkt: p.Packet) -> Reply:
    # counts and buffers must agree for pyzk to split records: freeze both now (§15 item 6)
    s.snapshot = s.device.snapshot()
    return [s.reply(pkt, p.CMD_ACK_OK, s.device.status_block(s.snapshot))]


def _pin_width(s: Session, pkt: p.Packet) -> Reply:
    return [s.reply(pkt, p.CMD_ACK_OK, bytes((PIN_WIDTH,)))]


def _get_time(s: Session, pkt: p.Packet) -> Reply:
    return [s.reply(pkt, p.CMD_ACK_OK, struct.pack("<I", p.encode_time(s.device.now())))]


def _set_time(s: Session, pkt: p.Packet) -> Reply:
    if len(pkt.data) < 4:
        raise p.ProtocolError("CMD_SET_TIME without a time")
    s.device.set_clock(p.decode_time(p.u32(pkt.data)))
    return _ok(s, pkt)


def _clear_log(s: Session, pkt: p.Packet) -> Reply:
    s.device.clear_log()
    return _ok(s, pkt)


def _reg_event(s: Session, pkt: p.Packet) -> Reply:
    # only attendance events are emulated; a mask without EF_ATTLOG (e.g. EF_FINGER) gets none
    s.live_mask = p.u32(pkt.data) & p.EF_ATTLOG
    if s.live_mask:
        s.device.live.add(s.listener)
    else:
        s.device.live.discard(s.listener)
        s.queue.clear()
    return _ok(s, pkt)


def _prepare_buffer(s: Session, pkt: p.Packet) -> Reply:
    sub, _fct = p.parse_buffer_request(pkt.data)
    snap = s.snapshot or s.device.snapshot()
    s.snapshot = snap
    if sub == p.CMD_USERTEMP_RRQ:
        body = snap.users
    elif sub == p.CMD_ATTLOG_RRQ:
        body = snap.records
    elif sub == p.CMD_DB_RRQ:
        body = b""  # no fingerprint templates
    else:
        return [s.reply(pkt, p.CMD_ACK_ERROR)]
    dataset = struct.pack("<I", len(body)) + body
    if len(dataset) <= INLINE_MAX:  # small datasets come back inline, as real firmware does (§9.2a)
        return [s.reply(pkt, p.CMD_DATA, dataset)]
    s.dataset = dataset
    return [s.reply(pkt, p.CMD_ACK_OK, p.data_stat(len(dataset)))]


def _read_buffer(s: Session, pkt: p.Packet) -> Reply:
    start, size = p.parse_read_request(pkt.data)
    if s.dataset is None or start < 0 or size <= 0 or start >= len(s.dataset):
        return [s.reply(pkt, p.CMD_ACK_ERROR)]
    chunk = memoryview(s.dataset)[start : start + size]
    out = [s.reply(pkt, p.CMD_PREPARE_DATA, p.prepare_data(len(chunk)))]
    if s.udp:
        step = p.UDP_DATA_MAX
        out += [s.reply(pkt, p.CMD_DATA, chunk[i : i + step]) for i in range(0, len(chunk), step)]
    else:
        out.append(s.reply(pkt, p.CMD_DATA, chunk))
    out.append(s.reply(pkt, p.CMD_ACK_OK))
    return out


def _free_data(s: Session, pkt: p.Packet) -> Reply:
    s.dataset = None
    return _ok(s, pkt)


HANDLERS: dict[int, Handler] = {
    p.CMD_CONNECT: _connect, p.CMD_AUTH: _auth, p.CMD_EXIT: _exit,
    p.CMD_RESTART: _restart, p.CMD_POWEROFF: _restart,
    p.CMD_ENABLEDEVICE: _enable, p.CMD_DISABLEDEVICE: _enable,
    p.CMD_GET_VERSION: _version, p.CMD_OPTIONS_RRQ: _option_read, p.CMD_OPTIONS_WRQ: _option_write,
    p.CMD_GET_FREE_SIZES: _sizes, p.CMD_GET_PINWIDTH: _pin_width,
    p.CMD_GET_TIME: _get_time, p.CMD_SET_TIME: _set_time,
    p.CMD_CLEAR_ATTLOG: _clear_log, p.CMD_CLEAR_DATA: _clear_log,
    p.CMD_REG_EVENT: _reg_event,
    p.CMD_PREPARE_BUFFER: _prepare_buffer, p.CMD_READ_BUFFER: _read_buffer, p.CMD_FREE_DATA: _free_data,
    p.CMD_REFRESHDATA: _ok, p.CMD_STARTVERIFY: _ok, p.CMD_CANCELCAPTURE: _ok,
    p.CMD_TESTVOICE: _ok, p.CMD_UNLOCK: _ok, p.CMD_DOORSTATE_RRQ: _ok,
}
