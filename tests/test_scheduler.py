"""Continuous batching: requests joining a running T3 batch (DecodeBatch) and the scheduler thread that
shares batches between callers. Every request must sample exactly what it samples alone."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

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
    when the first one finishes. The lock (the model's KV cache) is held until all have submitted, so the
    batching does not depend on thread timing."""
    requests = _requests(budgets=(30, 20, 25, 35), seed=60)
    ref = _solos(t3, requests, 60)
    lock = threading.Lock()
    scheduler = T3Scheduler(t3, max_batch=3, lock=lock)
    futures = {}

    def caller(j):
        futures[j] = scheduler.submit(requests[j])

    with _Spy(t3.tfmr, "forward") as forward:
        with lock:
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


def test_scheduler_cancellation_and_callback_errors(t3):
    requests = _requests(budgets=(200, 200, 12, 200), seed=80)
    ref = _solos(t3, requests[2:3], 82)[0]
    lock = threading.Lock()
    scheduler = T3Scheduler(t3, max_batch=4, lock=lock)
    reports = []
    first_report = threading.Event()

    def listen(tokens):
        reports.append(len(tokens))
        first_report.set()

    cancelled = scheduler.submit(requests[0], on_tokens=listen)
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
    assert lock.acquire(timeout=1)  # released once the batch drained
    lock.release()


def test_scheduler_rejects_bad_requests_and_submits_after_close(t3):
    scheduler = T3Scheduler(t3, max_batch=2, lock=threading.Lock())
    bad = _requests(budgets=(4, 4, 4, 4))[0]
    bad.temperature = 0.0
    with pytest.raises(ValueError, match="temperature"):
        scheduler.submit(bad)
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(_requests(budgets=(4, 4, 4, 4))[0])
    with pytest.raises(ValueError, match="max_batch"):
        T3Scheduler(t3, max_batch=0, lock=threading.Lock())
    with pytest.raises(ValueError, match="check_every"):
        T3Scheduler(t3, max_batch=2, lock=threading.Lock(), check_every=0)


def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on(t3, monkeypatch):
    requests = _requests(budgets=(6, 6, 6, 6), seed=90)
    ref = _solos(t3, requests[1:2], 91)[0]
    lock = threading.Lock()
    scheduler = T3Scheduler(t3, max_batch=4, lock=lock)
    prefix_embeds = t3.prefix_embeds
    monkeypatch.setattr(t3, "prefix_embeds", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # failed while joining: its caller is told, not left waiting
        scheduler.submit(requests[0]).result(timeout=60)
    monkeypatch.setattr(t3, "prefix_embeds", prefix_embeds)
    assert torch.equal(scheduler.submit(requests[1]).result(timeout=60), ref)
    scheduler.close()
    assert lock.acquire(timeout=1)
    lock.release()
