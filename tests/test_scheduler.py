"""Continuous batching: requests joining a running T3 batch (DecodeBatch) and the scheduler thread that
shares batches between callers. Every request must sample exactly what it samples alone."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import CancelledError
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from faster_chatterbox.engine.batch_decode import DecodeBatch
from faster_chatterbox.engine.scheduler import T3Scheduler
from faster_chatterbox.models.llama import LlamaCache

from test_batch_decode import _model, _requests, _solo

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def t3():
    return _model()


def _solos(t3, requests, seed):
    return [_solo(t3, r, seed + j) for j, r in enumerate(requests)]


class _Spy:
    """Within `with`: counts calls of obj.name (obj: an instance or a class) and the largest first-argument
    batch it saw."""

    def __init__(self, obj, name):
        self.obj, self.name, self.calls, self.max_rows = obj, name, 0, 0
        self.own = vars(obj).get(name)  # defined on obj itself (a class's method), or None

    def __enter__(self):
        inner = getattr(self.obj, self.name)

        def spied(*args, **kwargs):
            self.calls += 1
            if args and torch.is_tensor(args[0]):
                self.max_rows = max(self.max_rows, args[0].shape[0])
            return inner(*args, **kwargs)

        setattr(self.obj, self.name, spied)
        return self

    def __exit__(self, *exc):
        if self.own is None:
            delattr(self.obj, self.name)  # the class's method again
        else:
            setattr(self.obj, self.name, self.own)


def test_requests_joining_a_running_batch_sample_as_alone(t3):
    """The longest-prefix request starts alone with a short budget; the others join at later checks, the
    last one after it has finished, when the batch must make room: the cache drops its unused leading
    slots (shift) and grows. Every request's tokens equal its solo decode."""
    requests = _requests(budgets=(30, 35, 30, 8), seed=40)
    ref = _solos(t3, requests, 40)
    batch = DecodeBatch(t3, check_every=4)
    got, order = {}, [3, 0, 2, 1]  # request 3 has the longest prefix
    with torch.inference_mode(), _Spy(LlamaCache, "shift") as shifts:
        batch.admit([3], [requests[3]])
        checks = 0
        while not batch.empty or len(got) < len(requests):
            waiting = [j for j in order if j not in got and all(live.key != j for live in batch.live)]
            if waiting and (checks in (1, 2) or batch.empty or len(got) == 1):
                j = waiting[0]
                batch.admit([j], [requests[j]])
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
            checks += 1
    for j in range(len(requests)):
        assert got[j] == ref[j].tolist(), j
    assert shifts.calls >= 1


def test_a_longer_prefix_joins_by_moving_the_batch_right(t3):
    """The shortest-prefix request starts alone; at its first check the longest-prefix one (39 slots longer)
    joins: the live row's cache moves right to make room in front. Both sample what they sample alone."""
    requests = _requests(budgets=(20, 20, 20, 20), seed=50)
    short, long = 2, 3  # no speech prompt: 39 positions shorter than request 3's prefix
    ref = {short: _solo(t3, requests[short], 50 + short), long: _solo(t3, requests[long], 50 + long)}
    batch, got = DecodeBatch(t3, check_every=4), {}
    with torch.inference_mode(), _Spy(LlamaCache, "shift") as shifts:
        batch.admit([short], [requests[short]])
        history = batch.decoder.next_slot
        for j, tokens, finished in batch.advance():
            assert not finished
        assert batch.decoder.next_slot == history + 3 < history + 39  # too short a history for the long prefix
        batch.admit([long], [requests[long]])
        while not batch.empty:
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
    assert shifts.calls == 1 and batch.decoder.next_slot > history + 39
    assert got[short] == ref[short].tolist() and got[long] == ref[long].tolist()


def test_scheduler_shares_batches_between_threads(t3):
    """Four callers on four threads, at most three requests per batch: the fourth joins the running batch
    when the first one finishes. The scheduler is paused until all have submitted, so the batching does not
    depend on thread timing."""
    requests = _requests(budgets=(30, 20, 25, 35), seed=60)
    ref = _solos(t3, requests, 60)
    scheduler = T3Scheduler(t3, max_batch=3)
    futures = {}

    def caller(j):
        futures[j] = scheduler.submit(requests[j])

    with _Spy(t3.tfmr, "forward") as forward:
        with scheduler.paused():
            threads = [threading.Thread(target=caller, args=(j,)) for j in range(len(requests))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results = {j: f.result(timeout=120) for j, f in futures.items()}
        scheduler.close()
    for j in range(len(requests)):
        assert torch.equal(results[j], ref[j]), j
    assert forward.max_rows > 2  # requests really shared a backbone batch (one request has <= 2 rows)
    assert forward.max_rows <= 6  # never more than max_batch requests (<= 2 rows each)


def test_a_held_scheduler_computes_nothing_until_the_hold_ends(t3):
    """While held, a running request stops at the batch's next check and one submitted meanwhile does not
    join (no forward runs); when the hold ends both decode to their solo tokens. A close ends a hold too."""
    requests = _requests(budgets=(40, 12), seed=95)
    ref = _solos(t3, requests, 95)
    scheduler = T3Scheduler(t3, max_batch=4, check_every=4)
    reports, hold_started = [], threading.Event()

    def listen(tokens):
        reports.append(len(tokens))
        hold_started.wait(60)  # a check reached before the hold waits for it: the next step would be after

    with _Spy(t3.tfmr, "forward") as forward:
        running = scheduler.submit(requests[0], on_tokens=listen)
        with scheduler.held():
            hold_started.set()
            joiner = scheduler.submit(requests[1])
            time.sleep(1.0)  # the thread's time to reach its hold
            calls = forward.calls
            time.sleep(0.5)
            assert forward.calls == calls and len(reports) <= 1
            assert not running.done() and not joiner.done()
        results = running.result(timeout=120), joiner.result(timeout=120)
    assert [r.tolist() for r in results] == [ref[0].tolist(), ref[1].tolist()]

    held = scheduler.submit(replace(requests[1], generator=torch.Generator().manual_seed(96)))
    with scheduler.held():
        closer = threading.Thread(target=scheduler.close)
        closer.start()
        closer.join(120)
        assert not closer.is_alive()  # close finished the request despite the hold
    assert held.result(timeout=1).tolist() == ref[1].tolist()


def test_scheduler_cancellation_and_callback_errors(t3):
    requests = _requests(budgets=(200, 200, 12, 200), seed=80)
    ref = _solos(t3, requests[2:3], 82)[0]
    scheduler = T3Scheduler(t3, max_batch=4)
    reports = []
    first_report = threading.Event()

    def listen(tokens):
        reports.append(len(tokens))
        first_report.set()

    cancelled = scheduler.submit(requests[0], on_tokens=listen)
    thread = scheduler._thread
    failing = scheduler.submit(requests[1], on_tokens=lambda tokens: 1 / 0)
    finished = scheduler.submit(requests[2])
    waiting = scheduler.submit(requests[3])
    assert first_report.wait(60)
    assert cancelled.cancel() and waiting.cancel()  # running and waiting requests alike
    assert torch.equal(finished.result(timeout=60), ref)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=60)
    with pytest.raises(CancelledError):
        cancelled.result()
    scheduler.close()
    assert max(reports) < 200  # the cancelled request left the batch early
    assert not thread.is_alive()  # gone once the batch drained


def test_scheduler_rejects_bad_requests_and_submits_after_close(t3):
    scheduler = T3Scheduler(t3, max_batch=2)
    bad = _requests(budgets=(4, 4, 4, 4))[0]
    bad.sampling = replace(bad.sampling, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        scheduler.submit(bad)
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(_requests(budgets=(4, 4, 4, 4))[0])
    with pytest.raises(ValueError, match="max_batch"):
        T3Scheduler(t3, max_batch=0)
    with pytest.raises(ValueError, match="check_every"):
        T3Scheduler(t3, max_batch=2, check_every=0)


def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on(t3, monkeypatch):
    requests = _requests(budgets=(6, 6, 6, 6), seed=90)
    ref = _solos(t3, requests[1:2], 91)[0]
    scheduler = T3Scheduler(t3, max_batch=4)
    prefix_embeds = t3.prefix_embeds
    monkeypatch.setattr(t3, "prefix_embeds", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # failed while joining: its caller is told, not left waiting
        scheduler.submit(requests[0]).result(timeout=60)
    monkeypatch.setattr(t3, "prefix_embeds", prefix_embeds)
    assert torch.equal(scheduler.submit(requests[1]).result(timeout=60), ref)
    scheduler.close()


# --- failures stay with the requests they concern ------------------------------------------------------


def _fail_once(inner, when=lambda *a, **kw: True):
    """inner, except that the first call for which when(*args, **kwargs) holds raises RuntimeError("boom")."""
    failed = []

    def wrapped(*args, **kwargs):
        if not failed and when(*args, **kwargs):
            failed.append(True)
            raise RuntimeError("boom")
        return inner(*args, **kwargs)

    wrapped.failed = failed
    return wrapped


def _joins_running_batch(x, pos, cache, rows=slice(None), **kw):
    return rows.start not in (None, 0)  # a prefill into rows after live ones


def test_a_failing_admit_leaves_the_batch_as_it_was(t3, monkeypatch):
    """Token 0 of two joiners fails after their prefill, then a joiner's prefill fails after the cache grew
    for it: the running request goes on as if nothing happened, and the same joiners admitted again sample
    what they sample alone."""
    import faster_chatterbox.engine.batch_decode as batch_decode

    requests = _requests(budgets=(30, 30, 30, 30), seed=95)
    ref = _solos(t3, requests, 95)
    batch, got = DecodeBatch(t3, check_every=4), {}
    with torch.inference_mode():
        batch.admit([2], [requests[2]])  # the shortest prefix: the others' need the cache moved right
        batch.advance()
        monkeypatch.setattr(batch_decode, "sample_rows", _fail_once(batch_decode.sample_rows))
        with pytest.raises(RuntimeError, match="boom"):
            batch.admit([0, 3], [requests[0], requests[3]])
        assert [live.key for live in batch.live] == [2] and batch.decoder.cache.batch == requests[2].rows
        batch.advance()
        monkeypatch.setattr(t3.tfmr, "forward", _fail_once(t3.tfmr.forward, _joins_running_batch))
        with pytest.raises(RuntimeError, match="boom"):
            batch.admit([1], [requests[1]])
        assert [live.key for live in batch.live] == [2] and batch.decoder.cache.batch == requests[2].rows
        batch.admit([0, 3], [requests[0], requests[3]])
        batch.advance()
        batch.admit([1], [requests[1]])
        while not batch.empty:
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
    assert batch.decoder.cache is None  # an empty batch holds no cache
    for j in range(len(requests)):
        assert got[j] == ref[j].tolist(), j


@pytest.mark.timeout(120)
def test_a_joiner_that_fails_fails_alone(t3, monkeypatch):
    """Two requests join a running one at the same check; the first one's prefix raises. It fails alone:
    the running request and the other joiner sample what they sample alone, and the next submit works."""
    requests = _requests(budgets=(40, 30, 30, 20), seed=100)
    ref = _solos(t3, requests, 100)
    bad, prefix_embeds = requests[1].cond, t3.prefix_embeds

    def failing_prefix(cond, *args, **kwargs):
        if cond is bad:
            raise RuntimeError("boom")
        return prefix_embeds(cond, *args, **kwargs)

    monkeypatch.setattr(t3, "prefix_embeds", failing_prefix)
    with T3Scheduler(t3, max_batch=4) as scheduler:
        joiners = []

        def join_at_first_check(tokens):  # on the scheduler thread: both wait for its next check
            if not joiners:
                joiners.extend(scheduler.submit(requests[j]) for j in (1, 2))

        running = scheduler.submit(requests[0], on_tokens=join_at_first_check)
        assert torch.equal(running.result(timeout=60), ref[0])
        with pytest.raises(RuntimeError, match="boom"):
            joiners[0].result(timeout=60)
        assert torch.equal(joiners[1].result(timeout=60), ref[2])
        assert torch.equal(scheduler.submit(requests[3]).result(timeout=60), ref[3])


@pytest.mark.timeout(120)
def test_a_failed_group_prefill_admits_the_joiners_one_by_one(t3, monkeypatch):
    """The prefill of two requests joining a running batch together fails once (after the batch made room
    for them): each is admitted alone instead, and all three sample what they sample alone."""
    requests = _requests(budgets=(40, 30, 30, 20), seed=110)
    ref = _solos(t3, requests, 110)
    forward = _fail_once(t3.tfmr.forward, _joins_running_batch)
    monkeypatch.setattr(t3.tfmr, "forward", forward)
    with T3Scheduler(t3, max_batch=4) as scheduler:
        joiners = []

        def join_at_first_check(tokens):
            if not joiners:
                joiners.extend(scheduler.submit(requests[j]) for j in (0, 3))  # longer prefixes than request 2's

        running = scheduler.submit(requests[2], on_tokens=join_at_first_check)
        assert torch.equal(running.result(timeout=60), ref[2])
        assert torch.equal(joiners[0].result(timeout=60), ref[0])
        assert torch.equal(joiners[1].result(timeout=60), ref[3])
    assert forward.failed


@pytest.mark.timeout(120)
def test_a_batch_that_cannot_be_built_fails_its_requests_only(t3, monkeypatch):
    requests = _requests(budgets=(6, 6, 6, 6), seed=120)
    ref = _solos(t3, requests[1:2], 121)[0]
    monkeypatch.setattr(DecodeBatch, "__init__", _fail_once(DecodeBatch.__init__))
    with T3Scheduler(t3, max_batch=4) as scheduler:
        with pytest.raises(RuntimeError, match="boom"):
            scheduler.submit(requests[0]).result(timeout=60)
        assert torch.equal(scheduler.submit(requests[1]).result(timeout=60), ref)


# --- lifecycle ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_close_with_cancel_stops_the_thread_and_frees_the_cache(t3, monkeypatch):
    caches, new_cache = [], t3.tfmr.new_cache  # weak references to every cache the scheduler makes

    def tracked_cache(*args, **kwargs):
        cache = new_cache(*args, **kwargs)
        caches.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(t3.tfmr, "new_cache", tracked_cache)
    scheduler = T3Scheduler(t3, max_batch=2)
    started = threading.Event()
    requests = _requests(budgets=(4000, 4000, 4000, 4000), seed=130)
    futures = [scheduler.submit(r, on_tokens=lambda tokens: started.set()) for r in requests[:3]]  # one waits
    thread = scheduler._thread
    assert started.wait(60)
    scheduler.close(cancel=True)
    assert not thread.is_alive()
    assert all(f.cancelled() for f in futures)
    gc.collect()
    assert caches and all(ref() is None for ref in caches)
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(requests[3])
    scheduler.close()  # again: nothing to do


@pytest.mark.timeout(120)
def test_leaving_the_with_block_finishes_what_was_submitted(t3):
    requests = _requests(budgets=(12, 8, 8, 8), seed=140)
    ref = _solos(t3, requests[:2], 140)
    with T3Scheduler(t3, max_batch=1) as scheduler:  # one at a time: the second still waits at close
        futures = [scheduler.submit(r) for r in requests[:2]]
    assert all(torch.equal(f.result(timeout=0), r) for f, r in zip(futures, ref))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("closed", [True, False])
def test_a_dropped_scheduler_and_its_model_are_freed(closed):
    """Closed or not, once its requests are done a scheduler nobody references is freed, and so is its T3:
    the thread, gone when idle, does not keep them alive."""
    t3 = _model()
    scheduler = T3Scheduler(t3, max_batch=2)
    future = scheduler.submit(_requests(budgets=(8, 8, 8, 8))[0])
    thread = scheduler._thread
    if closed:
        scheduler.close()
    refs = weakref.ref(scheduler), weakref.ref(t3)
    del scheduler, t3
    assert future.result(timeout=60).shape[0] <= 8
    thread.join(timeout=60)
    assert not thread.is_alive()
    gc.collect()
    assert all(ref() is None for ref in refs)


EXIT_MID_BATCH = """
import threading, torch
from faster_chatterbox.engine.batch_decode import DecodeRequest
from faster_chatterbox.engine.scheduler import T3Scheduler
from faster_chatterbox.models.llama import LlamaConfig
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config

torch.manual_seed(0)
t3 = T3(T3Config(llama=LlamaConfig(dim=256, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=512))).eval()
scheduler = T3Scheduler(t3, max_batch=4)
started = threading.Event()
text = torch.tensor([255, 10, 20, 30, 0])
for k in range(3):
    cond = T3Cond(speaker_emb=torch.randn(1, 256), cond_prompt_speech_tokens=torch.randint(0, 6561, (1, 150)))
    scheduler.submit(DecodeRequest(cond, text, max_new_tokens=4000), on_tokens=lambda tokens: started.set())
assert started.wait(60)
print("leaving mid-batch", flush=True)
"""


@pytest.mark.timeout(300)
def test_exit_with_an_unclosed_scheduler_mid_batch():
    """The interpreter exits while the scheduler thread decodes: it is stopped at exit, never aborts."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    for _ in range(5):
        run = subprocess.run([sys.executable, "-c", EXIT_MID_BATCH], capture_output=True, text=True, timeout=120,
                             env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "leaving mid-batch" in run.stdout
        assert "terminate called" not in run.stderr


def test_urgent_requests_join_first_and_beyond_max_batch(t3, monkeypatch):
    """One request per batch plus one urgent row: while A decodes, urgent C joins it at once, and
    non-urgent B (submitted before C) waits until both are done. Every request samples what it samples alone."""
    a, b, c = _requests(budgets=(40, 8, 8), seed=150)[:3]
    ref = _solos(t3, [a, b, c], 150)
    admitted, hold, held = [], threading.Event(), threading.Event()
    admit = DecodeBatch.admit

    def spied_admit(self, keys, requests):
        admitted.append([next(name for name, r in (("a", a), ("b", b), ("c", c)) if r is q) for q in requests])
        return admit(self, keys, requests)

    def a_tokens(tokens):  # the first check of A: the scheduler waits here while B and C are submitted
        if not held.is_set():
            held.set()
            hold.wait(timeout=60)

    monkeypatch.setattr(DecodeBatch, "admit", spied_admit)
    with T3Scheduler(t3, max_batch=1, urgent_rows=1) as scheduler:
        with _Spy(t3.tfmr, "forward") as forward:
            fa = scheduler.submit(a, on_tokens=a_tokens)
            assert held.wait(timeout=60)
            fb = scheduler.submit(b)
            fc = scheduler.submit(c, urgent=True)
            hold.set()
            results = [f.result(timeout=120) for f in (fa, fb, fc)]
    assert admitted == [["a"], ["c"], ["b"]]
    assert forward.max_rows > 2  # C shared A's batch (one request has <= 2 rows)
    for got, want in zip(results, ref):
        assert torch.equal(got, want)


def test_urgent_rows_must_be_a_count(t3):
    with pytest.raises(ValueError, match="urgent_rows"):
        T3Scheduler(t3, max_batch=2, urgent_rows=-1)
