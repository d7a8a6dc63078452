"""`tapstream bench ...`: benchmarks as programs; figures are recorded in docs/benchmarks.md."""

from __future__ import annotations

import typer

from infra.bench import run_pipeline_bench
from infra.bench_live import passed, run_live_bench
from infra.bench_live_plan import LiveOptions
from infra.bench_pull import FleetOptions, run_pull_fleet_bench, run_pull_log_bench
from infra.bench_run import BenchOptions
from tapstream.commands.common import emit_json, fail, settings_of

app = typer.Typer(help="Measure the pipeline; prints figures with the machine and versions.", no_args_is_help=True)


def _say(line: str) -> None:
    typer.echo(line, err=True)


@app.command("pipeline")
def pipeline(
    ctx: typer.Context,
    events: int = typer.Option(20_000, "--events", min=1, help="raw punches to pre-load and carry through"),
    devices: int = typer.Option(10, "--devices", min=1, help="terminals the punches come from (= Kafka keys)"),
    employees: int = typer.Option(1000, "--employees", min=1, help="employees published first; the new punches' badges"),
    batch_max: int | None = typer.Option(None, "--batch-max", min=1, help="worker batch size (default: TAPSTREAM_WORKER__BATCH_MAX)"),
    profile: bool = typer.Option(False, "--profile", help="run the worker under cProfile; print the top functions"),
    keep: bool = typer.Option(False, "--keep", help="keep the run's topics, schema and stores"),
    idle: float = typer.Option(5.0, "--idle", min=0.5, help="the worker exits after this many idle seconds"),
    timeout: float = typer.Option(1800.0, "--timeout", help="stop the worker after this many seconds"),
    start_timeout: float = typer.Option(
        120.0, "--start-timeout", help="give up when the worker has consumed nothing after this many seconds"
    ),
    seed: int = typer.Option(7, "--seed", help="seed of the generated punches"),
    mix: bool = typer.Option(
        True, "--mix/--no-mix",
        help="~3% re-sends, 1% unknown badges, 0.2% clocks reset to 2000 (--no-mix: all new, known)",
    ),
) -> None:
    """Carry N punches through an isolated worker into both sinks; print one JSON line of figures.

    Progress goes to stderr, the result line to stdout. Exit status 1 unless PostgreSQL and
    ClickHouse both hold exactly the expected records and the worker consumed N and counted
    exactly the expected duplicates, parked and quarantined punches.
    """
    options = BenchOptions(events=events, devices=devices, employees=employees, batch_max=batch_max,
                           profile=profile, keep=keep, idle_s=idle, timeout_s=timeout,
                           start_timeout_s=start_timeout, seed=seed, mix=mix)
    result = run_pipeline_bench(settings_of(ctx), options, say=_say)
    emit_json(result)
    raise typer.Exit(0 if result["counts_match"] else 1)


@app.command("pull-fleet")
def pull_fleet(
    ctx: typer.Context,
    devices: int = typer.Option(1000, "--devices", min=1, help="emulated pull devices, all in one `tapstream pull`"),
    rate: float = typer.Option(0.2, "--rate", min=0.0, help="punches per second per device while generating"),
    duration: float = typer.Option(60.0, "--duration", min=1.0, help="seconds of punch generation"),
    users: int = typer.Option(50, "--users", min=1, help="users enrolled on each device"),
    log_size: int = typer.Option(20, "--log-size", min=0, help="records already in each device log"),
    catchup: float = typer.Option(60.0, "--catchup", min=5.0, help="the producer's catch-up interval, seconds"),
    base_port: int = typer.Option(30_000, "--base-port", help="first emulator port (device i gets base + i)"),
    keep: bool = typer.Option(False, "--keep", help="keep the run's topics, schema and state"),
) -> None:
    """Keep N emulated devices in live capture; count missed punches, measure latency, CPU and memory.

    Exit status 1 when any generated punch is missing from attendance.raw or an unknown one is there.
    """
    options = FleetOptions(devices=devices, rate_per_s=rate, duration_s=duration, users=users, log_size=log_size,
                           catchup_s=catchup, base_port=base_port, keep=keep)
    result = run_pull_fleet_bench(settings_of(ctx), options, say=_say)
    emit_json(result)
    raise typer.Exit(0 if result["missed"] == 0 and result["extra"] == 0 else 1)


@app.command("pull-log")
def pull_log(
    ctx: typer.Context,
    records: int = typer.Option(100_000, "--records", min=1, help="records in the emulated device's log"),
    compare_pyzk: bool = typer.Option(False, "--compare-pyzk", help="also time pyzk's own get_attendance"),
    keep: bool = typer.Option(False, "--keep", help="keep the run's topics, schema and state"),
) -> None:
    """Download an N-record device log through pyzk and produce it to Kafka; print the times."""
    result = run_pull_log_bench(settings_of(ctx), records, _say, compare_pyzk=compare_pyzk, keep=keep)
    emit_json(result)
    raise typer.Exit(0 if result["in_raw_topic"] == records else 1)


@app.command("live")
def live(
    ctx: typer.Context,
    rate: float = typer.Option(500.0, "--rate", min=1.0, help="taps per second, steady"),
    duration: float = typer.Option(60.0, "--duration", min=1.0, help="seconds of taps"),
    clients: int = typer.Option(100, "--clients", min=0, help="SSE clients reading /events, connected before the load"),
    slow_clients: int = typer.Option(
        0, "--slow-clients", min=0, help="slow SSE clients besides; >0 also compares saturated worker throughput"
    ),
    devices: int = typer.Option(20, "--devices", min=1, help="emulated push devices the taps come from"),
    employees: int = typer.Option(1000, "--employees", min=1, help="employees published first; the taps' badges"),
    upload_interval: float = typer.Option(0.15, "--upload-interval", help="each device POSTs its last taps this often, s"),
    client_procs: int = typer.Option(2, "--client-procs", min=1, help="processes the SSE clients are spread over"),
    batch_within: float | None = typer.Option(
        None, "--batch-within", help="worker batch_within_s (default: TAPSTREAM_WORKER__BATCH_WITHIN_S)"
    ),
    batch_max: int | None = typer.Option(None, "--batch-max", min=1, help="worker batch size (default: configured)"),
    fetch_wait: int | None = typer.Option(
        None, "--fetch-wait", min=1, max=1500, help="worker fetch_max_wait_ms (default: TAPSTREAM_WORKER__FETCH_MAX_WAIT_MS)"
    ),
    compare_events: int = typer.Option(
        30_000, "--compare-events", min=0, help="events pre-loaded per throughput run (0: no comparison)"
    ),
    compare_pairs: int = typer.Option(3, "--compare-pairs", min=1, help="throughput runs with 0 and with N slow clients, alternating"),
    drain: float = typer.Option(60.0, "--drain", min=1.0, help="after the load, wait this long at most for the rest"),
    keep: bool = typer.Option(False, "--keep", help="keep the run's topics, schema and state"),
) -> None:
    """Tap -> SSE delivered and tap -> PostgreSQL row at a steady rate with C clients; print one JSON line.

    Exit status 1 unless every client got every punch, every upload was acknowledged and every
    punch has its PostgreSQL row.
    """
    options = LiveOptions(rate=rate, duration_s=duration, clients=clients, slow_clients=slow_clients, devices=devices,
                          employees=employees, upload_interval_s=upload_interval, client_procs=client_procs,
                          batch_within_s=batch_within, batch_max=batch_max, fetch_max_wait_ms=fetch_wait,
                          compare_events=compare_events,
                          compare_pairs=compare_pairs,
                          drain_s=drain, keep=keep)
    try:
        result = run_live_bench(settings_of(ctx), options, say=_say)
    except ValueError as exc:
        raise fail(exc) from exc
    emit_json(result)
    raise typer.Exit(0 if passed(result) else 1)
