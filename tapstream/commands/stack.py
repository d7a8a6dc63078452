"""`tapstream stack ...` (to be filled in)."""

from __future__ import annotations

import typer

app = typer.Typer(help="stack", no_args_is_help=True)
