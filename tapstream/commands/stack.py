"""`tapstream stack up | down | status`: the local Kafka, PostgreSQL and ClickHouse."""

from __future__ import annotations

import typer

from infra import stack
from tapstream.commands.common import emit_json, settings_of

app = typer.Typer(
    help="Run the local stack: a Kafka broker, PostgreSQL, embedded ClickHouse (state in .tapstream/).",
    no_args_is_help=True,
)

JSON = typer.Option(False, "--json", help="print one JSON document instead of text")


@app.command()
def up(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Start the managed services, create topics, apply migrations. Safe to repeat."""
    _show(stack.up(settings_of(ctx)), as_json)


@app.command()
def down(
    ctx: typer.Context,
    wipe: bool = typer.Option(False, "--wipe", help="also delete broker, PostgreSQL and ClickHouse data"),
) -> None:
    """Stop the managed services (external ones are left alone)."""
    typer.echo("\n".join(stack.down(settings_of(ctx), wipe=wipe)))


@app.command()
def status(ctx: typer.Context, as_json: bool = JSON) -> None:
    """Show what runs where (exit code 3 when something is down or a topic is missing)."""
    current = stack.status(settings_of(ctx))
    _show(current, as_json)
    if not current.healthy:
        raise typer.Exit(3)


def _show(status: stack.StackStatus, as_json: bool) -> None:
    if as_json:
        emit_json(status.to_dict())
    else:
        typer.echo(status.to_text())
