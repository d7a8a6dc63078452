"""ClickHouse sink against the real engine (embedded chDB), one fresh database per test.

chDB runs one engine per process, bound to the first path opened: this module opens a single
store for the whole session (``chdb_client``) and isolates tests by database, never by path.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from infra.migrate import migrate_clickhouse
from schemas.punch import EnrichedPunch, PunchSource
from tests.factories import deliver, enriched
from sinks.base import WriteResult
from sinks.clickhouse import ClickHouseSink, count_events, open_client
from tapstream.errors import ConfigError, PermanentSinkError, TransientSinkError

pytestmark = pytest.mark.integration


def punch(n: int, *, employee_id: str = "E-1", user_code: str = "1001", device_time: datetime | None = None) -> EnrichedPunch:
    return enriched(
        n, employee_id=employee_id, user_code=user_code, device_time=device_time,
        source=PunchSource.PULL_POLL, partition=2,
    )


def punches(start: int, stop: int, *, employee_id: str = "E-1") -> list[EnrichedPunch]:
    return [punch(n, employee_id=employee_id) for n in range(start, stop)]


@pytest.fixture
def ch_database(chdb_client: Client) -> Iterator[str]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    migrate_clickhouse(chdb_client, database)
    yield database
    chdb_client.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
def sink(chdb_client: Client, ch_database: str) -> ClickHouseSink:
    # Not closed per test: the session fixture owns the one client of the one engine.
    return ClickHouseSink(chdb_client, ch_database)


def raw_count(client: Client, database: str) -> int:
    return count_events(client, database, final=False)


def test_rewriting_a_batch_changes_nothing(sink: ClickHouseSink, chdb_client: Client, ch_database: str) -> None:
    rows = punches(0, 500)
    assert sink.write_batch(rows) == WriteResult(500, 500)
    sink.write_batch(rows)
    sink.write_batch(list(reversed(rows)))
    assert count_events(chdb_client, ch_database) == 500
    # Same token: the retries were dropped at insert time, not merely collapsed by FINAL.
    assert raw_count(chdb_client, ch_database) == 500


def test_overlapping_batches_collapse_to_one_row_per_event(
    sink: ClickHouseSink, chdb_client: Client, ch_database: str
) -> None:
    sink.write_batch(punches(0, 100))
    sink.write_batch(punches(50, 150))
    assert count_events(chdb_client, ch_database) == 150


def test_a_replay_with_corrected_values_lands_and_wins(
    sink: ClickHouseSink, chdb_client: Client, ch_database: str
) -> None:
    sink.write_batch(punches(0, 10, employee_id="WRONG"))
    sink.write_batch(punches(0, 10, employee_id="E-42"))
    assert count_events(chdb_client, ch_database) == 10
    employees = chdb_client.query(f"SELECT DISTINCT employee_id FROM {ch_database}.attendance_events FINAL")
    assert employees.result_rows == [("E-42",)]


def test_data_reads_back_as_written(sink: ClickHouseSink, chdb_client: Client, ch_database: str) -> None:
    row = punch(0, employee_id="Zoë Ñúñez 社員", user_code="PIN-é7")
    sink.write_batch([row])
    result = chdb_client.query(
        "SELECT toString(event_id), user_code, employee_id, toString(device_time), toString(punch_time),"
        " toString(received_at), device_tz, punch_state, verify_mode, source, source_partition, source_offset"
        f" FROM {ch_database}.attendance_events"
    )
    assert result.result_rows == [
        (
            str(row.punch.event_id),
            "PIN-é7",
            "Zoë Ñúñez 社員",
            "2026-03-01 08:00:00",  # the device's wall clock, unshifted whatever the process zone
            "2026-03-01 02:00:00",  # Asia/Dhaka is UTC+6
            "2026-03-01 02:05:07.123456",  # DateTime64(6): microseconds kept, as in Postgres
            "Asia/Dhaka",
            0,
            15,
            "pull-poll",
            2,
            0,
        )
    ]


def test_unstorable_rows_are_permanent_and_isolated_by_the_worker_delivery(
    sink: ClickHouseSink, chdb_client: Client, ch_database: str
) -> None:
    # DateTime64 columns store any year a device clock can show, so a row is unstorable only
    # through its text: a lone surrogate has no UTF-8 encoding.
    bad = punch(99, employee_id="E-\ud800")
    batch = [*punches(0, 3), bad, *punches(3, 5)]
    with pytest.raises(PermanentSinkError) as raised:
        sink.write_batch(batch)
    assert raised.value.reason == "unencodable_text"
    assert raw_count(chdb_client, ch_database) == 0

    outcome = deliver(sink, batch)
    rejected = [row for row, _ in outcome.rejected]
    assert rejected == [bad]
    assert count_events(chdb_client, ch_database) == 5


def test_an_unreachable_server_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(TransientSinkError):
        open_client(f"http://127.0.0.1:{closed_port}", "tapstream")


def test_one_process_cannot_open_a_second_chdb_path(chdb_client: Client, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="another path"):
        open_client(f"chdb://{tmp_path / 'other'}", "default")
    assert chdb_client.command("SELECT 1") == 1
