"""`tapstream demo`: the main job, on the embedded default stack."""

from __future__ import annotations

import typer

from infra.demo import run_demo
from tapstream.commands.common import fail, settings_of
from tapstream.errors import TapstreamError


def demo(ctx: typer.Context) -> None:
    """Bring the stack up, simulate push devices for a morning, and show what arrived where."""
    try:
        ok = run_demo(settings_of(ctx), say=typer.echo)
    except TapstreamError as exc:
        raise fail(exc) from exc
    raise typer.Exit(0 if ok else 1)
