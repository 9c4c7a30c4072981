"""The KV cache is a value (models/llama.py LlamaCache), owned by its decoder: the model holds only weights,
so threads decode with one model at once, each exactly as it decodes alone."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from dataclasses import asdict

from faster_chatterbox.engine.batch_decode import generate_speech_tokens_batch
from faster_chatterbox.engine.scheduler import T3Scheduler
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import KVCache

from helpers import rel_error
from test_batch_decode import _model, _requests, _solo
from test_scheduler import test_a_longer_prefix_joins_by_moving_the_batch_right as joining_moves_the_batch_right
from test_scheduler import test_requests_joining_a_running_batch_sample_as_alone as joining_after_others

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def t3():
    return _model()


def test_the_model_holds_only_weights(t3):
    r = _requests()[0]
    generate_speech_tokens(t3, r.cond, r.text_tokens, max_new_tokens=4)
    assert not list(t3.buffers())
    for module in t3.modules():  # no tensor outside the parameters
        assert not [name for name, v in vars(module).items() if torch.is_tensor(v)], type(module).__name__


@pytest.mark.timeout(120)
def test_threads_decoding_one_model_at_once_sample_as_alone(t3, monkeypatch):
    """Two threads run generate_speech_tokens on one T3 at the same time (their forwards interleave), each
    with its own generator: each gets exactly the tokens it gets alone."""
    requests = _requests(budgets=(60, 60, 60, 60), seed=10)[:2]
    ref = [_solo(t3, r, 10 + j) for j, r in enumerate(requests)]
    got, order = [None, None], []  # order: the thread of each backbone forward
    forward = t3.tfmr.forward
    start = threading.Barrier(2)

    def spied(*args, **kwargs):
        order.append(threading.get_ident())
        return forward(*args, **kwargs)

    def decode(j):
        start.wait()
        got[j] = _solo(t3, requests[j], 10 + j)

    monkeypatch.setattr(t3.tfmr, "forward", spied)
    threads = [threading.Thread(target=decode, args=(j,)) for j in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches >= 2  # really at the same time, not one after the other


@pytest.mark.timeout(120)
def test_an_exact_decode_runs_beside_a_scheduler_batch(t3):
    """generate_speech_tokens does not wait for the scheduler's batch to drain; both sample as alone."""
    requests = _requests(budgets=(200, 200, 200, 20), seed=20)
    ref = [_solo(t3, r, 20 + j) for j, r in enumerate(requests)]
    with T3Scheduler(t3, max_batch=4) as scheduler:
        started = threading.Event()
        futures = [scheduler.submit(r, on_tokens=lambda tokens: started.set()) for r in requests[:3]]
        assert started.wait(60)
        exact = _solo(t3, requests[3], 23)
        assert not all(f.done() for f in futures)  # the batch still runs
        batched = [f.result(timeout=60) for f in futures]
    assert torch.equal(exact, ref[3])
    for a, b in zip(batched, ref):
        assert torch.equal(a, b)


def test_a_reused_cache_decodes_as_a_new_one(t3):
    """One cache through decodes of different row counts (CFG pair, one row) and lengths."""
    requests = _requests(budgets=(30, 12, 20, 25), seed=30)
    ref = [_solo(t3, r, 30 + j) for j, r in enumerate(requests)]
    cache = t3.tfmr.new_cache(1, 8)
    for j in (3, 0, 1, 3, 2):
        r = requests[j]
        got = generate_speech_tokens(t3, r.cond, r.text_tokens, max_new_tokens=r.max_new_tokens,
                                     generator=torch.Generator().manual_seed(30 + j), cache=cache, **asdict(r.sampling))
        assert torch.equal(got, ref[j]), j


def test_a_failed_resize_leaves_the_cache_usable(t3, monkeypatch):
    """An allocation failing part way through growing the cache (some layers grown, some not): the cache
    keeps its rows and slots, and decoding on in it gives what a cache that never grew gives."""
    tfmr, dim = t3.tfmr, t3.cfg.llama.dim
    x = torch.randn(2, 14, dim, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(14)
    with torch.inference_mode():
        ref = tfmr(x, pos, tfmr.new_cache(2, 14))
        cache = tfmr.new_cache(2, 14)
        head = tfmr(x[:, :10], pos[:10], cache, kv_len=10)
        reserve, calls = KVCache.reserve, []

        def failing_reserve(self, *args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("out of memory")
            return reserve(self, *args)

        monkeypatch.setattr(KVCache, "reserve", failing_reserve)
        with pytest.raises(RuntimeError, match="out of memory"):
            cache.resize(4, 64)
        assert (cache.batch, cache.max_seq_len) == (2, 14)
        assert {layer.k.shape[0] for layer in cache.layers} == {2}
        assert cache.layers[0]._k_store.shape[2] == 64 and cache.layers[1]._k_store.shape[2] == 14  # part way
        tail = [tfmr(x[:, i : i + 1], pos[i : i + 1], cache, kv_len=i + 1) for i in range(10, 14)]
    assert rel_error(torch.cat([head, *tail], dim=1), ref) < 1e-5


@contextlib.contextmanager
def _uninitialized_memory_is_nan():
    """Floating-point tensors from torch.empty / Tensor.new_empty hold NaN, as memory nobody wrote may."""
    empty, new_empty = torch.empty, torch.Tensor.new_empty

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "empty", lambda *args, **kwargs: nan(empty(*args, **kwargs)))
        mp.setattr(torch.Tensor, "new_empty", lambda self, *args, **kwargs: nan(new_empty(self, *args, **kwargs)))
        yield


def test_no_decode_reads_a_slot_before_writing_it(t3):
    """Caches are allocated uninitialized: with NaN there, every path decodes what it decodes otherwise
    (a NaN read, even masked, would poison a row). Exact loop, teacher forcing, a batch with left padding
    and rows leaving; the joining scenarios (rows zeroed as they join, the batch moving right and left)
    compute their references inside, where a NaN would make sampling fail."""
    requests = _requests(seed=40)
    ref = [_solo(t3, r, 40 + j) for j, r in enumerate(requests)]
    forced = torch.randint(0, 6561, (10,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_logits = t3(requests[0].cond, requests[0].text_tokens, forced, cfg=True)
    with _uninitialized_memory_is_nan():
        assert torch.isnan(t3.tfmr.new_cache(1, 4).layers[0].k).all()  # really poisoned
        assert all(torch.equal(_solo(t3, r, 40 + j), ref[j]) for j, r in enumerate(requests))
        with torch.inference_mode():
            assert torch.equal(t3(requests[0].cond, requests[0].text_tokens, forced, cfg=True), ref_logits)
        for r, j in zip(requests, range(40, 44)):
            r.generator = torch.Generator().manual_seed(j)
        assert all(torch.equal(a, b) for a, b in zip(generate_speech_tokens_batch(t3, requests), ref))
        joining_after_others(t3)
        joining_moves_the_batch_right(t3)
