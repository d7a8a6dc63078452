"""The live monitor page in a real browser, end to end.

An emulated pull terminal (`tapstream pull` reading it through pyzk) and a push device (ADMS
requests to `tapstream push`) punch; the worker stores the punches and publishes them to a fresh
live topic; `tapstream monitor` serves the page, which headless Chromium opens through Selenium.
The page must show what reached PostgreSQL (event ids, employee names, words for states and
verify methods, both sources), both devices online, counters above zero, and a punch made after
it loaded, without a reload. A screenshot goes to tests/artifacts/monitor.png.

Chromium and chromedriver are Debian's (/usr/bin); the driver path is given explicitly so
Selenium Manager never tries to download one. Missing, they FAIL the test: it never skips.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from emulator.device import DeviceConfig
from emulator.fleet import ThreadedFleet
from emulator.records import LogRecord
from infra.harness import TapstreamProcess, free_port, wait_http
from producers.registry import add_device
from schemas.punch import DEVICE_TIME_FORMAT, compute_event_id
from tests.integration.pipeline_helpers import (
    FAST_WORKER, REPO, Pipeline, add_employee, request, synced, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "tests" / "artifacts" / "monitor.png"
KNOWN = ["1001", "1002", "1003"]  # the emulator's user codes for users=3
STRANGER = "9999"  # a badge HR does not know: parked, counted as unmatched
PULL = "PAGE-PULL-01"
PUSH = "PAGE-PUSH-01"
STATE_WORDS = {0: "check-in", 1: "check-out"}
VERIFY_WORDS = {15: "face", 4: "card"}

FEED_JS = """return [...document.querySelectorAll('#feed tbody tr')].map(r => ({
  id: r.dataset.eventId, source: r.dataset.source,
  employee: r.querySelector('[data-field=employee] .main').textContent,
  state: r.querySelector('[data-field=state] .main').textContent,
  verify: r.querySelector('[data-field=verify] .main').textContent,
  device: r.querySelector('[data-field=device] .main').textContent,
  site: r.querySelector('[data-field=site] .main').textContent}))"""
DEVICES_JS = "return Object.fromEntries([...document.querySelectorAll('#devices .device')]" \
             ".map(c => [c.dataset.serial, c.dataset.online]))"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium with a 1280x900 viewport; fails the test if Chromium is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"the monitor page test needs {' and '.join(missing)} "
                    "(Debian packages chromium and chromium-driver)", pytrace=False)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1280,900", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # console errors, read at the end
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # --window-size includes the (invisible) window frame: pin the viewport itself.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def start_pipeline(make_pipeline: Callable[..., Pipeline], dsn: str, pull_port: int) -> tuple[Pipeline, list[TapstreamProcess], str]:
    """Worker, push endpoint and pull producer on fresh topics; (pipeline, processes, push URL)."""
    # make_pipeline gives fresh live and alerts topics too
    fast_alerts = {"TAPSTREAM_ALERTS__INTERVAL_S": "1"}
    pipeline = make_pipeline(dsn, raw_partitions=1, **FAST_WORKER, **fast_alerts)
    with psycopg.connect(dsn) as conn:
        add_device(conn, serial=PULL, kind="pull", timezone="Asia/Dhaka", name="Canteen", site="Plant",
                   address="127.0.0.1", port=pull_port)
        add_device(conn, serial=PUSH, kind="push", timezone="UTC", name="Main gate", site="HQ")
    for code in KNOWN:
        add_employee(dsn, code, f"E-{code}")
    worker = pipeline.start_worker()
    synced(pipeline, KNOWN[-1], worker)
    push, push_url = pipeline.start_push()
    pull = pipeline.start_pull()
    wait_for(lambda: (pipeline.pull_status(pull.pid) or {}).get(PULL, {}).get("state") == "live", 60,
             f"{PULL} live", pull)
    return pipeline, [worker, push, pull], push_url


def start_monitor(pipeline: Pipeline) -> tuple[TapstreamProcess, str]:
    port = free_port()
    monitor = pipeline.start("monitor", "monitor", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    assert wait_http(url + "/healthz", 60)["ok"] is True
    return monitor, url


def push_punch(push_url: str, code: str, state: int = 1, verify: int = 4) -> str:
    """One ADMS line for ``code`` now (the device is in UTC); its event id."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    line = f"{code}\t{now:{DEVICE_TIME_FORMAT}}\t{state}\t{verify}\t\t0\t0\r\n"
    status, reply = request(push_url, f"/iclock/cdata?SN={PUSH}&table=ATTLOG&Stamp=9999", line.encode())
    assert (status, reply) == (200, "OK: 1")
    return str(compute_event_id(PUSH, code, now, state))


def pull_punch(fleet: ThreadedFleet, code: str) -> str:
    record: LogRecord | None = fleet.punch(PULL, user_code=code, state=0)
    assert record is not None
    return str(compute_event_id(PULL, record.user_code, record.device_time, record.state))


def stored(dsn: str) -> dict[str, str]:
    """event id -> employee name of every punch in PostgreSQL."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT r.event_id, e.name FROM attendance_records r JOIN employees e USING (employee_id)"
        ).fetchall()
    return {str(event_id): name for event_id, name in rows}


def feed(driver: WebDriver) -> dict[str, dict[str, str]]:
    rows: list[dict[str, str]] = driver.execute_script(FEED_JS)
    return {row["id"]: row for row in rows}


def feed_holding(driver: WebDriver, event_ids: set[str]) -> dict[str, dict[str, str]] | None:
    """The feed once it shows every one of ``event_ids`` (None before)."""
    rows = feed(driver)
    return rows if event_ids <= set(rows) else None


def counter(driver: WebDriver, name: str) -> int | None:
    text: str = driver.execute_script(f"return document.getElementById('count-{name}').textContent")
    digits = text.replace(",", "").strip()
    return int(digits) if digits.isdigit() else None


def check_row(row: dict[str, Any], name: str, serial: str) -> None:
    """A feed row says in words what the punch was, with the registry's names."""
    assert row["employee"] == name
    if serial == PUSH:
        assert (row["source"], row["state"], row["verify"]) == ("push", "check-out", "card")
        assert (row["device"], row["site"]) == ("Main gate", "HQ")
    else:
        assert row["source"].startswith("pull-") and (row["state"], row["verify"]) == ("check-in", "face")
        assert (row["device"], row["site"]) == ("Canteen", "Plant")


def load_page(browser: WebDriver, url: str, before: dict[str, str], dsn: str, watched: list[TapstreamProcess]) -> None:
    """Open the page; it shows every stored punch as it is, both devices online, today's counts."""
    names = stored(dsn)
    browser.get(url + "/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready") == "true", 30, "the page")
    browser.execute_script("window.notReloaded = true")
    shown = wait_for(lambda: feed_holding(browser, set(before)), 30, "the stored punches in the feed", *watched)
    for event_id, serial in before.items():
        check_row(shown[event_id], names[event_id], serial)
    wait_for(lambda: browser.execute_script(DEVICES_JS) == {PULL: "true", PUSH: "true"}, 30,
             "both devices online in the grid", *watched)
    wait_for(lambda: (counter(browser, "punches") or 0) >= len(before), 30, "today's punches counted", *watched)
    wait_for(lambda: (counter(browser, "unmatched") or 0) >= 1, 30, "the stranger's punch counted", *watched)
    wait_for(lambda: browser.find_element("id", "conn").get_attribute("data-state") == "live", 10, "live")


def check_live(browser: WebDriver, after: dict[str, str], dsn: str, watched: list[TapstreamProcess]) -> None:
    """Punches made after the page loaded show on top of the feed, without a reload."""
    shown = wait_for(lambda: feed_holding(browser, set(after)), 30, "the new punches in the feed, no reload", *watched)
    assert browser.execute_script("return window.notReloaded") is True
    names = stored(dsn)
    for event_id, serial in after.items():
        check_row(shown[event_id], names[event_id], serial)
    newest = browser.execute_script("return document.querySelector('#feed tbody tr').dataset.eventId")
    assert newest in after


def check_site_filter(browser: WebDriver, fleet: ThreadedFleet, push_url: str, monitor_url: str,
                      watched: list[TapstreamProcess]) -> None:
    """Site HQ: only the push device's punches and card; a pull punch the monitor has is not shown."""
    Select(browser.find_element("id", "filter-site")).select_by_value("HQ")
    wait_for(lambda: browser.execute_script(DEVICES_JS) == {PUSH: "true"}, 10, "the grid narrowed to HQ")
    assert browser.current_url.endswith("/?site=HQ")
    assert {row["site"] for row in feed(browser).values()} == {"HQ"}
    hidden = pull_punch(fleet, KNOWN[2])
    wait_for(lambda: hidden in {p["event_id"] for p in wait_http(monitor_url + "/api/snapshot", 10)["recent"]},
             30, "the pull punch at the monitor", *watched)
    shown = push_punch(push_url, KNOWN[2])
    wait_for(lambda: feed_holding(browser, {shown}), 30, "the HQ punch in the filtered feed", *watched)
    assert hidden not in feed(browser)  # sent before the HQ punch, it would be there by now unfiltered


def test_monitor_page_shows_the_stored_punches_and_new_ones_live(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema,
    browser: WebDriver,
) -> None:
    slow_clock = DeviceConfig(PULL, users=len(KNOWN), verify_mode=15, timezone="Asia/Dhaka", clock_offset_s=-300)
    with ThreadedFleet([slow_clock]) as fleet:
        pipeline, processes, push_url = start_pipeline(make_pipeline, pg_schema.dsn, fleet.port(PULL))
        monitor, monitor_url = start_monitor(pipeline)
        watched = [*processes, monitor]
        before = {pull_punch(fleet, code): PULL for code in KNOWN}
        before |= {push_punch(push_url, code): PUSH for code in KNOWN}
        push_punch(push_url, STRANGER)
        wait_for(lambda: set(before) <= set(stored(pg_schema.dsn)), 60, "the punches in PostgreSQL", *watched)

        load_page(browser, monitor_url, before, pg_schema.dsn, watched)
        check_live(browser, {push_punch(push_url, KNOWN[0]): PUSH, pull_punch(fleet, KNOWN[1]): PULL},
                   pg_schema.dsn, watched)
        alert = "#alerts li[data-kind=clock_drift]"  # the device clock is 5 min slow
        wait_for(lambda: browser.find_elements("css selector", alert), 30, "the clock drift alert", *watched)
        assert PULL in browser.find_element("css selector", alert).text
        time.sleep(1)  # let the fresh-row highlight settle before the picture
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
        print(f"screenshot: {SCREENSHOT}")

        check_site_filter(browser, fleet, push_url, monitor_url, watched)
        logs = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it unannotated
        severe = [e for e in logs if e.get("level") == "SEVERE"]
        assert not severe, f"errors in the page's console: {severe}"
