"""`tapstream bench ...`: benchmarks as programs; figures are recorded in docs/benchmarks.md."""

from __future__ import annotations

import typer

from infra.bench import run_pipeline_bench
from infra.bench_run import BenchOptions
from tapstream.commands.common import emit_json, settings_of

app = typer.Typer(help="Measure the pipeline; prints figures with the machine and versions.", no_args_is_help=True)


def _say(line: str) -> None:
    typer.echo(line, err=True)


@app.command("pipeline")
def pipeline(
    ctx: typer.Context,
    events: int = typer.Option(20_000, "--events", min=1, help="raw punches to pre-load and carry through"),
    devices: int = typer.Option(10, "--devices", min=1, help="terminals the punches come from (= Kafka keys)"),
    employees: int = typer.Option(1000, "--employees", min=1, help="employees published first; every punch matches one"),
    batch_max: int | None = typer.Option(None, "--batch-max", min=1, help="worker batch size (default: TAPSTREAM_WORKER__BATCH_MAX)"),
    profile: bool = typer.Option(False, "--profile", help="run the worker under cProfile; print the top functions"),
    keep: bool = typer.Option(False, "--keep", help="keep the run's topics, schema and stores"),
    idle: float = typer.Option(5.0, "--idle", min=0.5, help="the worker exits after this many idle seconds"),
    timeout: float = typer.Option(1800.0, "--timeout", help="stop the worker after this many seconds"),
    start_timeout: float = typer.Option(
        120.0, "--start-timeout", help="give up when the worker has consumed nothing after this many seconds"
    ),
    seed: int = typer.Option(7, "--seed", help="seed of the generated punches"),
) -> None:
    """Carry N punches through an isolated worker into both sinks; print one JSON line of figures.

    Progress goes to stderr, the result line to stdout. Exit status 1 when the row counts in
    PostgreSQL and ClickHouse do not both equal N.
    """
    options = BenchOptions(events=events, devices=devices, employees=employees, batch_max=batch_max,
                           profile=profile, keep=keep, idle_s=idle, timeout_s=timeout,
                           start_timeout_s=start_timeout, seed=seed)
    result = run_pipeline_bench(settings_of(ctx), options, say=_say)
    emit_json(result)
    raise typer.Exit(0 if result["counts_match"] else 1)
