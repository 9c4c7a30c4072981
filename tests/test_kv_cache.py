"""The KV cache is a value (models/llama.py LlamaCache), owned by its decoder: the model holds only weights,
so threads decode with one model at once, each exactly as it decodes alone."""

from __future__ import annotations

import threading

import pytest
import torch

from faster_chatterbox.engine.scheduler import T3Scheduler
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import KVCache

from helpers import rel_error
from test_batch_decode import _model, _requests, _solo

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
                                     generator=torch.Generator().manual_seed(30 + j), temperature=r.temperature,
                                     cfg_weight=r.cfg_weight, repetition_penalty=r.repetition_penalty,
                                     min_p=r.min_p, top_p=r.top_p, cache=cache)
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
