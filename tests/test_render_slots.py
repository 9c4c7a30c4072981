"""The render queue: a call's first chunk renders before other calls' later chunks that queued earlier; rows of
callers waiting together with one key share a batch, never with another key; a failed render fails each of its
callers; an interrupted caller leaves the line and the others still render."""

from __future__ import annotations

import threading
import time

import pytest

from faster_chatterbox.engine.render_slots import RenderQueue


def _wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


class Recorder:
    """A render function that records its batches (key, rows) and returns (key, row) per row; `fail`: keys whose
    renders raise."""

    def __init__(self, fail=()):
        self.batches, self.fail = [], set(fail)

    def __call__(self, key, rows):
        self.batches.append((key, list(rows)))
        if key in self.fail:
            raise ValueError(f"render of {key} failed")
        return [(key, row) for row in rows]


def _callers(queue, submissions):
    """Start one thread per (name, key, rows, urgent) submission while `queue` is paused, each submitting once
    the previous one waits in line (a known arrival order); returns ({name: outputs or exception}, threads)."""
    got, threads = {}, []

    def call(name, key, rows, urgent):
        try:
            got[name] = queue.render(key, rows, urgent=urgent)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            got[name] = exc

    for name, key, rows, urgent in submissions:
        before = queue.waiting
        threads.append(threading.Thread(target=call, args=(name, key, rows, urgent)))
        threads[-1].start()
        _wait_for(lambda n=before + len(rows): queue.waiting == n)
    return got, threads


def _join(threads):
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a caller hangs"


def test_urgent_renders_take_the_next_free_slot_first():
    render = Recorder()
    queue = RenderQueue(1, 1, render)
    with queue.paused():  # nothing renders while three renders queue: two later chunks, then a first chunk
        got, threads = _callers(queue, [("later-1", "k", ["later-1"], False), ("later-2", "k", ["later-2"], False),
                                        ("first", "k", ["first"], True)])
    _join(threads)
    assert [rows for _, rows in render.batches] == [["first"], ["later-1"], ["later-2"]]
    assert got == {name: [("k", name)] for name in ("first", "later-1", "later-2")}


def test_slots_run_renders_side_by_side_up_to_their_number():
    inside, most, lock, go = [0], [0], threading.Lock(), threading.Event()

    def render(key, rows):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        go.wait(timeout=10)
        with lock:
            inside[0] -= 1
        return rows

    queue = RenderQueue(2, 1, render)
    threads = [threading.Thread(target=queue.render, args=("k", [k])) for k in range(5)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: queue.waiting == 3 and inside[0] == 2)
    go.set()
    _join(threads)
    assert most[0] == 2 and queue.waiting == 0


def test_callers_waiting_together_share_batches_of_one_key_up_to_their_size():
    """Line: a1 a2 a3 (a, key k), b1 b2 (b, k), c1 (c, key j), d1 (d, k), then e1 (e, j, urgent): e goes first
    with the other j row; then the k rows, four at most per batch, in order of arrival."""
    render = Recorder()
    queue = RenderQueue(1, 4, render)
    with queue.paused():
        got, threads = _callers(queue, [("a", "k", ["a1", "a2", "a3"], False), ("b", "k", ["b1", "b2"], False),
                                        ("c", "j", ["c1"], False), ("d", "k", ["d1"], False), ("e", "j", ["e1"], True)])
    _join(threads)
    assert render.batches == [("j", ["e1", "c1"]), ("k", ["a1", "a2", "a3", "b1"]), ("k", ["b2", "d1"])]
    assert got == {"a": [("k", "a1"), ("k", "a2"), ("k", "a3")], "b": [("k", "b1"), ("k", "b2")],
                   "c": [("j", "c1")], "d": [("k", "d1")], "e": [("j", "e1")]}


def test_a_call_alone_renders_its_rows_a_batch_at_a_time():
    render = Recorder()
    assert RenderQueue(1, 2, render).render("k", [1, 2, 3]) == [("k", 1), ("k", 2), ("k", 3)]
    assert render.batches == [("k", [1, 2]), ("k", [3])]
    assert RenderQueue(1, 2, render).render("k", []) == []


def test_a_failed_render_fails_every_caller_in_its_batch_and_no_other():
    render = Recorder(fail={"k"})
    queue = RenderQueue(1, 4, render)
    with queue.paused():
        got, threads = _callers(queue, [("a", "k", ["a1", "a2"], False), ("b", "k", ["b1"], False),
                                        ("c", "j", ["c1"], False)])
    _join(threads)
    assert isinstance(got["a"], ValueError) and got["b"] is got["a"] and "render of k failed" in str(got["a"])
    assert got["c"] == [("j", "c1")] and queue.waiting == 0


def test_a_render_giving_the_wrong_number_of_outputs_is_an_error():
    with pytest.raises(RuntimeError, match="1 outputs for 2 rows"):
        RenderQueue(1, 2, lambda key, rows: rows[:1]).render("k", [1, 2])


def test_an_interrupted_wait_leaves_the_line_and_the_others_still_render():
    render = Recorder()
    queue = RenderQueue(1, 4, render)
    with queue.paused():
        got, threads = _callers(queue, [("a", "k", ["a1"], False)])
        with pytest.raises(KeyboardInterrupt), _interrupting(queue, threading.get_ident()):
            queue.render("k", ["mine-1", "mine-2"], urgent=True)
        assert queue.waiting == 1  # a's row only
    _join(threads)
    assert render.batches == [("k", ["a1"])] and got == {"a": [("k", "a1")]}
    assert queue.render("k", ["again"], urgent=True) == [("k", "again")]  # nobody stale stands in line


class _interrupting:
    """Within `with`: the next wait on the queue's condition in thread `ident` raises KeyboardInterrupt (Ctrl-C
    while waiting); other threads wait as usual."""

    def __init__(self, queue, ident):
        self.queue, self.ident = queue, ident

    def __enter__(self):
        condition = self.queue._changed
        original = condition.wait

        def wait(*args, **kwargs):
            if threading.get_ident() != self.ident:
                return original(*args, **kwargs)
            condition.wait = original
            raise KeyboardInterrupt

        condition.wait = wait
        return self

    def __exit__(self, *exc):
        self.queue._changed.__dict__.pop("wait", None)
        return False


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True])
def test_slot_and_batch_counts_are_positive_integers(n):
    with pytest.raises(ValueError, match="render slots"):
        RenderQueue(n, 1, Recorder())
    with pytest.raises(ValueError, match="render batch"):
        RenderQueue(1, n, Recorder())
