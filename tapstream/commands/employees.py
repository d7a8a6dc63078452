"""`tapstream employees ...`: the HR employee list (attendance code -> employee)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from infra.employee_sync import sync_employees
from infra.employees import import_employees
from tapstream.commands.common import ProgressBars, emit_json, settings_of

app = typer.Typer(help="Employees: attendance code -> employee id, name, department.", no_args_is_help=True)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV: attendance_code,employee_id[,name,department,active]"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Load a CSV into Postgres `employees` and the compacted `employees` topic."""
    settings = settings_of(ctx)
    bars = ProgressBars()
    try:
        result = import_employees(
            file, dsn=settings.postgres.effective_dsn(), bootstrap=settings.kafka.bootstrap,
            topic=settings.topics.employees, progress=bars.update,
        )
    finally:
        bars.close()
    if json_out:
        emit_json(result.__dict__)
    else:
        typer.echo(f"{result.rows} employees imported: {result.postgres_changed} changed in Postgres, "
                   f"{result.published} published to {settings.topics.employees}")


@app.command("sync")
def sync(
    ctx: typer.Context,
    watch: float = typer.Option(0.0, "--watch", min=0.0, help="repeat every SECONDS until Ctrl-C (0: once)"),
) -> None:
    """Publish what changed in the Postgres `employees` table to the `employees` topic (HR edits)."""
    settings = settings_of(ctx)
    while True:
        plan = sync_employees(settings.postgres.effective_dsn(), settings.kafka.bootstrap, settings.topics.employees)
        typer.echo(f"employees sync: {len(plan.upserts)} published, {len(plan.deletes)} removed "
                   f"({settings.topics.employees})")
        if not watch:
            return
        time.sleep(watch)
