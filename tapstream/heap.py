"""Keep the garbage collector's full passes off a long-running process's startup heap.

A full (generation 2) collection walks every object the collector tracks, holding the GIL. In
the worker that is Faust, aiokafka, pydantic, chDB's bindings and the employee map: 70-90 ms
per pass, measured at 500 punches/s, a few times a minute, with the event loop and both sink
threads stopped and every punch in flight waiting (docs/benchmarks.md, "Full collections").
``gc.freeze()`` moves what is alive once the process is up into a permanent generation that
collections skip; passes then took 0.1-3 ms. What the process allocates later is collected as
before, so nothing leaks that would not have leaked anyway.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap(process: str) -> int:
    """Collect once, then freeze every surviving object; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s up: %d startup objects moved out of the garbage collector's full passes", process, frozen)
    return frozen
