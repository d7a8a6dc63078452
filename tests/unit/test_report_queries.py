"""Reports without an engine: parameters, windows, lateness arithmetic, formats, the wire protocol."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from infra.report_server import ReportRequest, ReportServer, answer, ask_worker
from infra.reports import (
    PLACEHOLDER, REPORTS, ReportResult, Window, cell, format_csv, format_json, format_table, get_report, render,
    report_parameters, resolve_window, run_report, seconds_of_day,
)
from schemas.punch import EnrichedPunch, PunchSource, make_raw_punch
from sinks.rows import CLICKHOUSE_COLUMNS, clickhouse_row
from tapstream.errors import ConfigError, StackError
from tapstream.settings import AnalyticsSettings

WINDOW = Window(date(2026, 3, 2), date(2026, 3, 9))
NINE = AnalyticsSettings()  # 09:00, 5 minutes of grace


class FakeResult:
    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.column_names = tuple(columns)
        self.result_rows = rows


class FakeClient:
    """Records the query and its parameters; answers with ``result`` or raises ``error``."""

    def __init__(self, result: FakeResult | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.calls: list[tuple[str, dict[str, object]]] = []

    def query(self, sql: str, parameters: dict[str, object]) -> FakeResult:
        self.calls.append((sql, parameters))
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.mark.parametrize("name", list(REPORTS))
def test_every_placeholder_gets_a_value_and_nothing_is_formatted_in(name: str) -> None:
    report = REPORTS[name]
    params = report_parameters(report, "tapstream", WINDOW, NINE)
    assert set(params) == set(PLACEHOLDER.findall(report.sql))
    assert params["database"] == "tapstream"
    assert (params["day_from"], params["day_to"]) == (date(2026, 3, 2), date(2026, 3, 9))
    assert "{database:Identifier}." in report.sql and "FINAL" not in report.sql  # the views apply FINAL
    assert "%(" not in report.sql and "{database}" not in report.sql


def test_lateness_parameters_are_seconds_after_local_midnight() -> None:
    params = report_parameters(get_report("lateness"), "db", WINDOW, NINE)
    assert (params["work_start_s"], params["grace_s"]) == (9 * 3600, 300)
    late_shift = AnalyticsSettings(work_start=time(7, 30, 15, 999), grace_minutes=0)
    params = report_parameters(get_report("lateness"), "db", WINDOW, late_shift)
    assert (params["work_start_s"], params["grace_s"]) == (7 * 3600 + 30 * 60 + 15, 0)
    assert "work_start_s" not in report_parameters(get_report("daily-presence"), "db", WINDOW, NINE)


def test_analytics_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tapstream.settings import Settings

    monkeypatch.setenv("TAPSTREAM_ANALYTICS__WORK_START", "08:30")
    monkeypatch.setenv("TAPSTREAM_ANALYTICS__GRACE_MINUTES", "10")
    assert Settings().analytics == AnalyticsSettings(work_start=time(8, 30), grace_minutes=10)
    assert Settings.model_fields["analytics"].default == NINE


def stored(device_time: datetime, tz: str) -> tuple[datetime, datetime]:
    """(device_time, punch_time) as the ClickHouse sink stores a punch read at ``device_time`` in ``tz``."""
    punch = make_raw_punch(
        device_serial="DEV-1", user_code="7", device_time=device_time, device_tz=tz, punch_state=0,
        verify_mode=1, source=PunchSource.PUSH, raw="7", received_at=datetime(2026, 3, 3, tzinfo=UTC),
    )
    row = dict(zip(CLICKHOUSE_COLUMNS, clickhouse_row(EnrichedPunch(punch=punch, employee_id="E-7"))))
    return row["device_time"], row["punch_time"]


def late_minutes(first_arrival: datetime, analytics: AnalyticsSettings) -> int | None:
    """The lateness SQL's rule on a stored device_time: whole minutes late, None when on time."""
    params = report_parameters(get_report("lateness"), "db", WINDOW, analytics)
    late_s = seconds_of_day(first_arrival.time()) - int(str(params["work_start_s"]))
    return late_s // 60 if late_s > int(str(params["grace_s"])) else None


@pytest.mark.parametrize(("local", "tz", "utc", "late"), [
    # 23:30 UTC on the 1st is 05:30 on the 2nd in Dhaka: early, and on the device's day
    (datetime(2026, 3, 2, 5, 30), "Asia/Dhaka", datetime(2026, 3, 1, 23, 30, tzinfo=UTC), None),
    # 09:20 in New York is 14:20 UTC: judged on the local clock, 20 minutes late
    (datetime(2026, 3, 2, 9, 20), "America/New_York", datetime(2026, 3, 2, 14, 20, tzinfo=UTC), 20),
    # 09:05:00 is the last on-time second with 5 minutes of grace; 09:05:01 is 5 minutes late
    (datetime(2026, 3, 2, 9, 5), "Europe/Berlin", datetime(2026, 3, 2, 8, 5, tzinfo=UTC), None),
    (datetime(2026, 3, 2, 9, 5, 1), "Europe/Berlin", datetime(2026, 3, 2, 8, 5, 1, tzinfo=UTC), 5),
    # 23:50 in New York is already the 3rd in UTC: still the 2nd's arrival, 890 minutes late
    (datetime(2026, 3, 2, 23, 50), "America/New_York", datetime(2026, 3, 3, 4, 50, tzinfo=UTC), 890),
])
def test_lateness_is_judged_on_the_device_clock_across_utc_day_boundaries(
    local: datetime, tz: str, utc: datetime, late: int | None
) -> None:
    device_time, punch_time = stored(local, tz)
    assert punch_time == utc
    assert device_time.date() == date(2026, 3, 2)  # the report's day: toDate(device_time)
    assert late_minutes(device_time, NINE) == late


def test_grace_past_midnight_means_nobody_is_late() -> None:
    night = AnalyticsSettings(work_start=time(23, 30), grace_minutes=45)
    assert late_minutes(datetime(2026, 3, 2, 23, 59, 59), night) is None


def test_default_window_is_the_last_seven_local_days_including_today() -> None:
    today = date(2026, 3, 10)
    assert resolve_window(None, None, today) == Window(date(2026, 3, 4), date(2026, 3, 11))
    assert resolve_window(date(2026, 3, 1), None, today) == Window(date(2026, 3, 1), date(2026, 3, 11))
    assert resolve_window(None, date(2026, 2, 1), today) == Window(date(2026, 1, 25), date(2026, 2, 1))
    with pytest.raises(ConfigError, match="empty window"):
        resolve_window(date(2026, 3, 5), date(2026, 3, 5), today)


def test_unknown_report_and_format_are_refused_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match="daily-presence"):
        get_report("presence")
    with pytest.raises(ConfigError, match="table, csv, json"):
        render(ReportResult(["a"], []), "xml")


def test_run_report_binds_parameters_and_returns_plain_values() -> None:
    client = FakeClient(FakeResult(["day", "employees"], [(date(2026, 3, 2), 7)]))
    result = run_report(client, "tapstream", "daily-presence", WINDOW.start, WINDOW.end, NINE)  # type: ignore[arg-type]  # a fake
    assert result == ReportResult(["day", "employees"], [["2026-03-02", 7]])
    sql, params = client.calls[0]
    assert sql == get_report("daily-presence").sql and params["day_to"] == date(2026, 3, 9)


def test_missing_views_say_how_to_apply_the_migration() -> None:
    client = FakeClient(error=DatabaseError("Code: 60. DB::Exception: Unknown table daily_presence", code=60))
    with pytest.raises(StackError, match="0002_rollups"):
        run_report(client, "tapstream", "daily-presence", WINDOW.start, WINDOW.end, NINE)  # type: ignore[arg-type]  # a fake


def test_cells_are_plain_json() -> None:
    some_id = uuid.uuid4()
    assert cell(datetime(2026, 3, 2, 9, 7, 30)) == "2026-03-02 09:07:30"
    assert cell(date(2026, 3, 2)) == "2026-03-02"
    assert cell(some_id) == str(some_id)
    assert [cell(v) for v in (None, 3, 1.5, "x")] == [None, 3, 1.5, "x"]


RESULT = ReportResult(["device_serial", "day", "punches"], [["DEV-1", "2026-03-02", 12], ["DEV,2", "2026-03-02", 7]])


def test_table_aligns_text_left_and_numbers_right() -> None:
    assert format_table(RESULT).splitlines() == [
        "device_serial  day         punches",
        "-------------  ----------  -------",
        "DEV-1          2026-03-02       12",
        "DEV,2          2026-03-02        7",
    ]
    assert format_table(ReportResult(["day"], [])).splitlines()[-1] == "(no rows)"


def test_csv_and_json_keep_column_order() -> None:
    assert format_csv(RESULT).splitlines() == ["device_serial,day,punches", "DEV-1,2026-03-02,12", '"DEV,2",2026-03-02,7']
    assert format_csv(ReportResult(["day"], [])) == "day"
    rows = json.loads(format_json(RESULT))
    assert rows[1] == {"device_serial": "DEV,2", "day": "2026-03-02", "punches": 7}
    assert list(rows[0]) == RESULT.columns
    assert json.loads(format_json(ReportResult(["day"], []))) == []


def test_request_and_result_survive_the_wire() -> None:
    request = ReportRequest("lateness", WINDOW, AnalyticsSettings(work_start=time(8, 45), grace_minutes=2))
    assert ReportRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    assert ReportResult.from_json(json.loads(json.dumps(RESULT.to_json()))) == RESULT
    with pytest.raises(ConfigError, match="malformed"):
        ReportRequest.from_json({"report": "lateness", "from": "yesterday"})


def run_ok(request: ReportRequest) -> ReportResult:
    return RESULT


def test_the_server_answers_results_and_errors_as_data() -> None:
    line = json.dumps(ReportRequest("device-activity", WINDOW, NINE).to_json()).encode()
    assert answer(line, run_ok) == {"ok": True, **RESULT.to_json()}
    unknown = json.dumps({**json.loads(line), "report": "nope"}).encode()
    assert answer(unknown, run_ok)["error"].startswith("no report 'nope'")
    assert answer(b"{not json\n", run_ok)["ok"] is False

    def broken(request: ReportRequest) -> ReportResult:
        raise RuntimeError("engine gone")

    assert answer(line, broken) == {"ok": False, "error": "RuntimeError: engine gone"}


def test_no_socket_means_no_worker(tmp_path: Path) -> None:
    assert ask_worker(tmp_path / "reports.sock", ReportRequest("lateness", WINDOW, NINE), timeout_s=1) is None


def test_a_report_travels_over_the_socket_and_the_socket_goes_with_the_server(tmp_path: Path) -> None:
    path = tmp_path / "reports.sock"
    server = ReportServer(path, run_ok)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert ask_worker(path, ReportRequest("device-activity", WINDOW, NINE), timeout_s=5) == RESULT
        with pytest.raises(StackError, match="could not run report nope"):
            ask_worker(path, ReportRequest("nope", WINDOW, NINE), timeout_s=5)
    finally:
        server.close()
    assert not path.exists()
    server.close()  # twice is fine


def test_a_socket_left_by_a_killed_worker_means_no_worker(tmp_path: Path) -> None:
    path = tmp_path / "reports.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: what a SIGKILLed server leaves
    assert ask_worker(path, ReportRequest("lateness", WINDOW, NINE), timeout_s=1) is None
    ReportServer(path, run_ok).close()  # a new worker takes the path over
