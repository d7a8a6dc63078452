"""`tapstream demo`: the main job, on the embedded default stack."""

from __future__ import annotations

import typer

from infra.demo import run_demo
from tapstream.commands.common import settings_of


def demo(ctx: typer.Context) -> None:
    """Bring the stack up, simulate push devices for a morning, and show what arrived where."""
    ok = run_demo(settings_of(ctx), say=typer.echo)
    raise typer.Exit(0 if ok else 1)
