"""Run a `tapstream` command under cProfile, including the Python threads it starts.

    python -m infra.bench_profile OUT.prof worker --exit-when-idle 5

cProfile sees only the thread that enables it; the worker's sinks write from their own
threads (streams.delivery), so every thread started here gets a profiler of its own. The
event loop's profile goes to OUT.prof, all other threads' together to OUT.threads.prof.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def threads_path(out: Path) -> Path:
    """Where the profile of the non-main threads goes for a main profile at ``out``."""
    return out.with_suffix(".threads.prof")


def _profile_new_threads(collected: list[cProfile.Profile]) -> None:
    original: Callable[[threading.Thread], None] = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()
            collected.append(profile)

    threading.Thread.run = run  # type: ignore[method-assign]  # the point: wrap every later thread


def _dump_threads(collected: list[cProfile.Profile], out: Path) -> None:
    if not collected:
        return
    stats = pstats.Stats(collected[0])
    for profile in collected[1:]:
        stats.add(profile)
    stats.dump_stats(str(threads_path(out)))


def main(argv: list[str]) -> int:
    """Profile ``tapstream <argv[1:]>``, writing the profiles next to ``argv[0]``."""
    if len(argv) < 2:
        print("usage: python -m infra.bench_profile OUT.prof <tapstream args...>", file=sys.stderr)
        return 2
    out = Path(argv[0])
    from tapstream.cli import app

    collected: list[cProfile.Profile] = []
    _profile_new_threads(collected)
    profile = cProfile.Profile()
    code = 0
    profile.enable()
    try:
        app(argv[1:], prog_name="tapstream")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        profile.disable()
        profile.dump_stats(str(out))
        _dump_threads(collected, out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
