"""Render slots: a call's first chunk renders before other calls' later chunks that queued earlier."""

from __future__ import annotations

import threading
import time

import pytest

from faster_chatterbox.engine.render_slots import RenderSlots


def _wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_urgent_renders_take_the_next_free_slot_first():
    slots, order = RenderSlots(1), []

    def render(name, urgent):
        with slots.take(urgent=urgent):
            order.append(name)

    with slots.take():  # the slot is busy while three renders queue: two later chunks, then a first chunk
        threads = []
        for name, urgent in (("later-1", False), ("later-2", False), ("first", True)):
            threads.append(threading.Thread(target=render, args=(name, urgent)))
            threads[-1].start()
            _wait_for(lambda: slots.waiting == len(threads))
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["first", "later-1", "later-2"]


def test_slots_run_renders_side_by_side_up_to_their_number():
    slots, inside, most, lock = RenderSlots(2), [0], [0], threading.Lock()
    go = threading.Event()

    def render():
        with slots.take():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            go.wait(timeout=10)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=render) for _ in range(5)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: slots.waiting == 3)
    go.set()
    for thread in threads:
        thread.join(timeout=10)
    assert most[0] == 2 and slots.waiting == 0


def test_an_interrupted_wait_leaves_the_line():
    slots = RenderSlots(1)
    with slots.take():
        with pytest.raises(KeyboardInterrupt):
            with _interrupting(slots):
                with slots.take():
                    pass
        assert slots.waiting == 0
    with slots.take(urgent=True):  # the slot is free again and nobody stale stands in line
        pass


class _interrupting:
    """Within `with`: the next wait on the slots' condition raises KeyboardInterrupt (Ctrl-C while waiting)."""

    def __init__(self, slots):
        self.slots = slots

    def __enter__(self):
        condition = self.slots._changed
        original = condition.wait

        def interrupted(*args, **kwargs):
            condition.wait = original
            raise KeyboardInterrupt

        condition.wait = interrupted
        return self

    def __exit__(self, *exc):
        self.slots._changed.__dict__.pop("wait", None)
        return False


@pytest.mark.parametrize("n", [0, -1, 1.5, "2"])
def test_slot_counts_are_positive_integers(n):
    with pytest.raises(ValueError, match="render slots"):
        RenderSlots(n)
