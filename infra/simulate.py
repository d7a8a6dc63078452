"""Simulated push devices: a morning of punches as ADMS requests, with what should come of them.

``morning(...)`` builds the scenario as data (pure, seeded): ATTLOG batches per device, some
re-sent as a device does after a lost reply, a few malformed lines, punches by badges HR does
not know, and a device nobody registered. ``Expected`` is computed from the same data, so the
demo and the tests can check the pipeline's counts against an independent expectation.
``post_scenario`` plays it against a running `tapstream push` endpoint over HTTP.
"""

from __future__ import annotations

import random
import urllib.request
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

DEVICE_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class SimDevice:
    serial: str
    timezone: str
    site: str
    registered: bool = True


@dataclass
class Expected:
    """What the pipeline must report for one scenario."""

    unique_punches: int = 0  # distinct valid punches from registered devices
    matched: int = 0  # ...of which by employees HR knows (land in both sinks)
    unmatched: int = 0  # ...by badges HR does not know (parked)
    resent_lines: int = 0  # valid lines sent again in re-sent batches (duplicates)
    bad_lines: int = 0  # malformed lines (quarantined by the endpoint)
    unknown_device_lines: int = 0  # lines from an unregistered device (quarantined)

    @property
    def raw_messages(self) -> int:
        """Messages the endpoint publishes to attendance.raw."""
        return self.unique_punches + self.resent_lines

    @property
    def quarantined(self) -> int:
        return self.bad_lines + self.unknown_device_lines


@dataclass
class Scenario:
    devices: list[SimDevice]
    batches: list[tuple[str, bytes]] = field(default_factory=list)  # (serial, ATTLOG body)
    expected: Expected = field(default_factory=Expected)


BAD_LINES = (
    b"1003\t2026-13-45 25:61:00\t0\t1\t\t0\t0",  # impossible date
    b"1004",  # missing fields
    b"\xff\xfe\x00\x13garbage\x80",  # binary noise
    b"   \t2026-11-23 08:00:00\t0\t1",  # empty PIN
)


def morning(
    devices: list[SimDevice], known_codes: list[str], unknown_codes: list[str], day: date, seed: int
) -> Scenario:
    """Every known and unknown badge punches in once per device between 07:30 and 09:30."""
    rng = random.Random(seed)
    scenario = Scenario(devices=devices)
    exp = scenario.expected
    for device in devices:
        lines = _device_lines(rng, known_codes + unknown_codes, day)
        batches = [lines[i : i + 25] for i in range(0, len(lines), 25)]
        for number, batch in enumerate(batches):
            body = list(batch)
            if number == 1:
                body[3:3] = BAD_LINES  # malformed lines amid good ones
            scenario.batches.append((device.serial, b"\r\n".join(body) + b"\r\n"))
            if number % 3 == 0:  # lost reply: the device sends the same batch again
                scenario.batches.append((device.serial, b"\n".join(body) + b"\n"))
                _count_resend(exp, device, body)
        _count(exp, device, lines, batches, set(unknown_codes))
    return scenario


def _device_lines(rng: random.Random, codes: list[str], day: date) -> list[bytes]:
    start = datetime.combine(day, datetime.min.time()) + timedelta(hours=7, minutes=30)
    stamps = sorted((rng.randrange(0, 7200), code) for code in codes)
    return [
        f"{code}\t{(start + timedelta(seconds=s)).strftime(DEVICE_TIME)}\t0\t{rng.choice((1, 15, 4))}\t\t0\t0\t".encode()
        for s, code in stamps
    ]


def _count(exp: Expected, device: SimDevice, lines: list[bytes], batches: list[list[bytes]], unknown: set[str]) -> None:
    bad = len(BAD_LINES) if len(batches) > 1 else 0
    if not device.registered:
        exp.unknown_device_lines += len(lines) + bad
        return
    exp.bad_lines += bad
    exp.unique_punches += len(lines)
    parked = sum(1 for line in lines if line.split(b"\t")[0].decode() in unknown)
    exp.unmatched += parked
    exp.matched += len(lines) - parked


def _count_resend(exp: Expected, device: SimDevice, body: list[bytes]) -> None:
    bad = sum(1 for line in body if line in BAD_LINES)
    if not device.registered:
        exp.unknown_device_lines += len(body)
    else:
        exp.resent_lines += len(body) - bad
        exp.bad_lines += bad


def post(base_url: str, path: str, body: bytes | None = None, timeout_s: float = 10.0) -> str:
    """One device request; returns the reply body (raises on HTTP errors)."""
    request = urllib.request.Request(base_url + path, data=body, method="POST" if body is not None else "GET")
    request.add_header("User-Agent", "iClock Proxy/1.09")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return str(response.read().decode("utf-8"))


def post_scenario(base_url: str, scenario: Scenario) -> list[str]:
    """Handshake every device, upload every batch, poll once; return the upload replies."""
    for device in scenario.devices:
        post(base_url, f"/iclock/cdata?SN={device.serial}&options=all&pushver=2.4.1&language=69")
    replies = []
    for serial, body in scenario.batches:
        replies.append(post(base_url, f"/iclock/cdata?SN={serial}&table=ATTLOG&Stamp=9999", body))
    for device in scenario.devices:
        post(base_url, f"/iclock/cdata?SN={device.serial}&table=OPERLOG&Stamp=9999", b"OPLOG 4\t14\t2026-11-23 07:00:00\t0\t0\t0\t0\n")
        post(base_url, f"/iclock/getrequest?SN={device.serial}")
    return replies
