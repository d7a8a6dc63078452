"""`tapstream schemas ...`: the event contracts as JSON Schema."""

from __future__ import annotations

from pathlib import Path

import typer

from schemas.codec import export_json_schemas

app = typer.Typer(help="Event contracts (JSON Schema export).", no_args_is_help=True)

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "schemas" / "jsonschema"


@app.command("export")
def export(folder: Path = typer.Option(DEFAULT_FOLDER, help="where to write <name>.v<N>.json")) -> None:
    """Write the JSON Schema of every contract."""
    for path in export_json_schemas(folder):
        typer.echo(str(path))
