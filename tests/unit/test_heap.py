"""freeze_startup_heap: what is alive is out of the collector's passes; later garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from tapstream.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def tracked(obj: object) -> bool:
    """In one of the three generations a collection walks."""
    return any(o is obj for generation in range(3) for o in gc.get_objects(generation=generation))


def test_the_startup_heap_is_frozen_and_later_cycles_are_still_collected() -> None:
    kept = Node()
    assert tracked(kept)
    try:
        assert freeze_startup_heap("test") == gc.get_freeze_count() > 0
        assert not tracked(kept) and kept.me is kept  # frozen: alive, and skipped by every pass
        later = Node()
        gone = weakref.ref(later)
        assert tracked(later)
        del later
        gc.collect()
        assert gone() is None  # allocated after the freeze: collected as usual
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
