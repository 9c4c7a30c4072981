"""The static-cache batch (engine.static_batch): the tokens of the dynamic batch with the keyed sampler, joins
and leaves without compaction, and a decode step that compiles whole and samples what the eager step does."""

from __future__ import annotations

import copy

import pytest
import torch

from faster_chatterbox.devices import fbgemm_fp16
from faster_chatterbox.engine import static_batch
from faster_chatterbox.engine.batch_decode import generate_speech_tokens_batch
from faster_chatterbox.engine.quantize import PackedFp16Linear, reduce_precision_
from faster_chatterbox.engine.scheduler import T3Scheduler
from faster_chatterbox.engine.static_batch import StaticDecodeBatch, decode_step, new_decode_batch
from faster_chatterbox.models.llama import LlamaCache
from faster_chatterbox.settings import engine_settings

from test_batch_decode import STOP, _model, _requests

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def t3():
    return _model(stop_from=14)


def _run(batch, requests, join_late: dict[int, int] | None = None) -> list[list[int]]:
    """Decode `requests` in `batch`; join_late: request -> the number of checks after which it joins."""
    join_late, got, checks = join_late or {}, {}, 0
    with torch.inference_mode():
        first = [j for j in range(len(requests)) if j not in join_late]
        batch.admit(first, [requests[j] for j in first])
        while not batch.empty or any(c >= checks for c in join_late.values()):
            joining = [j for j, c in join_late.items() if c == checks]
            if joining:
                batch.admit(joining, [requests[j] for j in joining])
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
            checks += 1
    return [got[j] for j in range(len(requests))]


def _reference(t3, requests) -> list[list[int]]:
    return [t.tolist() for t in generate_speech_tokens_batch(t3, requests, sampler="keyed")]


def test_static_batch_samples_the_dynamic_batch_tokens(t3):
    """Four requests (prefixes 39 slots apart, one without CFG, budgets 20-35, early stops)."""
    ref = _reference(t3, _requests(seed=11))
    assert any(t[-1] == STOP and len(t) < 20 for t in ref)  # some stop early, others run to their budget
    assert _run(StaticDecodeBatch(t3, 3), _requests(seed=11)) == ref


def test_joining_takes_free_slots_and_grows_by_buckets_only(t3, monkeypatch):
    """Requests joining a running batch (one slot -> two -> four: bucket moves) and after others left
    (a freed slot reused) sample what they sample alone; the cache is copied only when the bucket grows."""
    requests = _requests(budgets=(40, 12, 30, 300), seed=21)
    ref = _reference(t3, _requests(budgets=(40, 12, 30, 300), seed=21))
    writes = []
    write_rows = LlamaCache.write_rows
    monkeypatch.setattr(LlamaCache, "write_rows", lambda self, rows, src, start=0: (writes.append(len(rows)),
                                                                                     write_rows(self, rows, src, start))[1])
    batch = StaticDecodeBatch(t3, 4)
    assert _run(batch, requests, join_late={1: 1, 2: 2, 3: 3}) == ref
    # rows copied: prefills into their slots (2 rows each) and 3 bucket moves (slots 1 -> 2 -> 4, then request
    # 3's 300 tokens: 256 -> 512 cache slots, all 8 rows); nothing else moves
    assert writes == [2, 2, 2, 4, 2, 8, 2]
    assert batch.cache is None and len(batch.slots) == 4  # an empty batch holds no cache


def _packed_fp16(t3):
    """The fast preset's T3 on x86 CPUs without AMX: bf16 weights packed for FBGEMM's fp16 GEMM."""
    if not fbgemm_fp16(torch.device("cpu")):
        pytest.skip("FBGEMM's fp16 GEMM (x86 CPUs)")
    packed = reduce_precision_(copy.deepcopy(t3), "bf16", packed_fp16=True)
    assert type(packed.tfmr.layers[0].self_attn.qkv_proj) is PackedFp16Linear
    return packed


@pytest.mark.parametrize("precision", ["fp32", "packed fp16"])
def test_the_step_compiles_whole_and_samples_the_eager_tokens(t3, precision):
    """decode_step under torch.compile(fullgraph=True) (aot_eager here: the graph capture without inductor's
    code generation, seconds instead of minutes) gives the eager step's tokens and state, step for step; the
    packed fp16 T3 too, whose FBGEMM weights the graph reaches through the `packed_fp16_linear` op."""
    t3 = _packed_fp16(t3) if precision == "packed fp16" else t3
    torch._dynamo.reset()
    compiled = static_batch.compiled_step(backend="aot_eager")  # the "inductor" step's compile settings
    with torch.inference_mode():
        batch = StaticDecodeBatch(t3, 4)
        batch.admit([0, 1, 2], _requests(seed=31)[:3])
        twin = copy.deepcopy((batch.cache, batch.state))
        kv_len = batch.cache.max_seq_len
        for _ in range(6):
            eager = decode_step(t3, batch.cache, batch.state, kv_len)
            assert torch.equal(compiled(t3, twin[0], twin[1], kv_len), eager)
            assert all(torch.equal(a, b) for a, b in zip(batch.state.tensors(), twin[1].tensors()))
        assert torch.equal(batch.cache.layers[-1].k, twin[0].layers[-1].k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_captured_step_samples_the_eager_tokens():
    t3 = _model(stop_from=14).cuda()
    requests = _requests(seed=41)
    for r in requests:
        r.generator = torch.Generator("cuda").manual_seed(r.generator.initial_seed())
    eager = _run(StaticDecodeBatch(t3, 4, "static"), requests)
    for r in requests:
        r.generator.manual_seed(r.generator.initial_seed())
    assert _run(StaticDecodeBatch(t3, 4, "cuda_graph"), requests) == eager


def test_scheduler_runs_static_batches(t3):
    ref = _reference(t3, _requests(seed=51))
    with T3Scheduler(t3, max_batch=4, new_batch=new_decode_batch(t3, "static", "keyed")) as scheduler:
        futures = [scheduler.submit(r) for r in _requests(seed=51)]
        assert [f.result(timeout=300).tolist() for f in futures] == ref


def test_step_settings_are_checked():
    assert engine_settings("fast", "cpu").t3_step in static_batch.STEPS
    with pytest.raises(ValueError, match="t3_step"):
        new_decode_batch(None, "graph", "keyed")
    with pytest.raises(ValueError, match="keyed"):
        new_decode_batch(None, "static", "multinomial")
    with pytest.raises(ValueError, match="cuda_graph"):
        StaticDecodeBatch(_model(), step="cuda_graph")
    with pytest.raises(ValueError, match="check_every"):
        StaticDecodeBatch(_model(), check_every=0)
