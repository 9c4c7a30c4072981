"""Voices' prefixes attended in place (models/llama.py `SharedPrefix`, `attend_with_prefix`): attention over
[a group's prefix, a row's own keys] equals attention over the two concatenated, on both of its routes, and
a batch that shares its prefixes decodes as its rows do alone, the alignment guard included."""

from __future__ import annotations

import math
from dataclasses import replace
from unittest import mock

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from faster_chatterbox.engine.batch_decode import BatchDecoder, DecodeRequest, PrefixCache, generate_speech_tokens_batch
from faster_chatterbox.engine.sampling import SamplingParams
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import LlamaCache, LlamaConfig, SharedPrefix, attend_with_prefix
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config
from faster_chatterbox.settings import SHARED_PREFIX_SLOTS_CPU, engine_settings

from test_alignment_guard import GUARD_LLAMA, MTL_TEXT_VOCAB, _favour_stop
from test_batch_decode import _model, _requests
from test_t3 import _inputs, _randomize

pytestmark = pytest.mark.usefixtures("single_thread")


def _prefix(cfg: LlamaConfig, length: int, seed: int) -> LlamaCache:
    """A 1-row cache of `length` slots (one layer) holding random keys and values."""
    cache = LlamaCache(cfg, 1, length, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    for t in (cache.layers[0].k, cache.layers[0].v):
        t.copy_(torch.randn(t.shape, generator=g))
    return cache


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 23), min_size=1, max_size=3), rows=st.integers(1, 6),
       queries=st.integers(1, 4), own=st.integers(1, 9), kv_heads=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**16), weights=st.booleans())
def test_attention_over_a_shared_prefix_is_attention_over_both(lengths, rows, queries, own, kv_heads, seed, weights):
    """Groups of odd lengths, rows in any group order, several queries with a causal mask and left padding
    over the own keys, grouped-query heads: y (and the own slots' attention) as over [prefix, own keys]."""
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=kv_heads, head_dim=8)
    g = torch.Generator().manual_seed(seed)
    row_group = [int(x) for x in torch.randint(0, len(lengths), (rows,), generator=g)]
    used = sorted(set(row_group))  # groups without rows are not in a SharedPrefix
    prefixes = [_prefix(cfg, lengths[i], seed + i) for i in used]
    shared = SharedPrefix.of(prefixes, [used.index(i) for i in row_group])
    L = own + queries
    q = torch.randn(rows, 4, queries, 8, generator=g)
    k, v = torch.randn(rows, kv_heads, L, 8, generator=g), torch.randn(rows, kv_heads, L, 8, generator=g)
    start = torch.randint(0, own, (rows,), generator=g)  # each row's first own slot: padding before it
    slot, query = torch.arange(L), torch.arange(own, L)[:, None]
    mask = ((slot <= query) & (slot >= start[:, None, None]))[:, None]  # (B, 1, S, L)
    y, attention = attend_with_prefix(q, k, v, shared.own_key_bias(mask), *shared.layers[0], shared, weights=weights)

    # each row's own prefix, padded to the longest with masked zeros as SharedPrefix pads it
    pk, pv = shared.layers[0][0][shared.row_group], shared.layers[0][1][shared.row_group]
    valid = torch.arange(pk.shape[2]) < shared.row_offset[:, None]  # (B, P)
    full_mask = torch.cat((valid[:, None, None].expand(rows, 1, queries, -1), mask), dim=-1)
    keys, values = (torch.cat((a, b), dim=2).repeat_interleave(4 // kv_heads, dim=1) for a, b in ((pk, k), (pv, v)))
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=full_mask)
    assert (y - expected).abs().max() < 1e-5
    if weights:
        scores = (q @ keys.transpose(-1, -2) / math.sqrt(8)).masked_fill(~full_mask, -math.inf).softmax(-1)
        assert (attention - scores[..., pk.shape[2]:]).abs().max() < 1e-6
    else:
        assert attention is None


def test_groups_of_different_lengths_are_padded_and_stacked_once():
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=8)
    short, long = _prefix(cfg, 3, 0), _prefix(cfg, 7, 1)
    shared = SharedPrefix.of([short, long], [1, 0, 1, 1])
    k, v = shared.layers[0]
    assert k.shape == (2, 4, 7, 8) and torch.equal(k[0, :, :3], short.layers[0].k[0]) and not k[0, :, 3:].any()
    assert shared.row_rank.tolist() == [0, 0, 1, 2] and shared.members.tolist() == [[1, 0, 0], [0, 2, 3]]
    assert shared.row_offset.tolist() == [7, 3, 7, 7]
    alone = SharedPrefix.of([long], [0, 0])
    assert alone.layers[0][0] is long.layers[0].k  # one group: the prefix cache's own tensors, no copy
    again = SharedPrefix.of([short, long], [0, 1], shared.layers)
    assert again.layers is shared.layers


def test_the_own_slots_bias_is_made_once_per_forward():
    """A causal (S, L) mask becomes each row's additive bias (B, 1, S, L) in the keys' dtype; a two-layer
    decode over a shared prefix makes it once, not in each layer."""
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=8)
    shared = SharedPrefix.of([_prefix(cfg, 5, 0)], [0, 0, 0])
    causal = torch.arange(4) <= torch.arange(2, 4)[:, None]  # (S=2, L=4)
    bias = shared.own_key_bias(causal)
    assert bias.shape == (3, 1, 2, 4) and bias.dtype == torch.float32
    assert torch.equal(bias[1, 0] == 0, causal) and torch.isinf(bias[2, 0, 0, 3])
    requests = _requests()[:2]
    requests[1] = replace(requests[1], cond=requests[0].cond)
    with torch.inference_mode():
        t3 = _model()
        decoder = BatchDecoder(t3, PrefixCache(t3), shared_prefix_slots=1)
        decoder.admit(requests)
        with mock.patch.object(SharedPrefix, "own_key_bias", autospec=True,
                               side_effect=SharedPrefix.own_key_bias) as made:
            decoder.step(torch.zeros((2, 1), dtype=torch.long))
    assert t3.cfg.llama.n_layers > 1
    assert decoder.sharing and made.call_count == 1


def test_a_batch_shares_its_prefixes_from_the_threshold_on():
    """A voice's rows x its prefix length against `shared_prefix_slots`: four rows of one voice (CFG pairs of two
    requests) hold 4 x V prefix slots; a batch below that copies them. Bad thresholds are named."""
    t3 = _model()
    requests = _requests()[:2]
    requests[1] = replace(requests[1], cond=requests[0].cond)
    cache = PrefixCache(t3)
    with torch.inference_mode():
        slots = 4 * cache.get(requests[0].cond).max_seq_len
        for threshold, sharing in ((slots, True), (slots + 1, False)):
            decoder = BatchDecoder(t3, cache, shared_prefix_slots=threshold)
            decoder.admit(requests)
            assert decoder.sharing is sharing and (decoder.shared is not None) is sharing
            decoder.keep([])  # emptied: the next fresh batch decides again
            assert not decoder.sharing and decoder.shared is None
    assert BatchDecoder(t3, cache, shared_prefix_slots=np.int64(8)).shared_prefix_slots == 8
    for bad in (0, 2.5, "4", True):
        with pytest.raises(ValueError, match="shared_prefix_slots"):
            BatchDecoder(t3, cache, shared_prefix_slots=bad)
    with pytest.raises(ValueError, match="prefix cache"):
        BatchDecoder(t3, None, shared_prefix_slots=8)


def test_a_joiner_in_a_live_voice_does_not_restack_the_live_prefixes():
    """Two voices live (their prefixes stacked into one padded pair per layer); a request joining in one of
    them prefills against its own voice alone and leaves the live rows' stack as it was: no re-stacking."""
    t3 = _model()
    requests = _requests()[:3]
    cache = PrefixCache(t3)
    with torch.inference_mode():
        decoder = BatchDecoder(t3, cache, shared_prefix_slots=1)
        decoder.admit(requests[:2])
        live = decoder.shared.layers
        with mock.patch.object(SharedPrefix, "_stack", wraps=SharedPrefix._stack) as stack:
            decoder.admit([replace(requests[2], cond=requests[0].cond)])
        assert decoder.shared.layers is live
        assert all(len(call.args[0]) == 1 for call in stack.call_args_list)  # the joiner's one voice: no copy
        assert decoder.shared.row_group.tolist() == [0, 0, 1, 1, 0, 0]


def test_guarded_rows_sharing_their_voice_decode_as_alone():
    """The alignment guard reads the aligned heads' attention on the text: with the voice's prefix attended in
    place, the weights come from the merged softmax, and each guarded row still draws what it draws alone."""
    t3 = T3(T3Config(text_tokens_dict_size=MTL_TEXT_VOCAB, llama=GUARD_LLAMA)).eval()
    _randomize(t3, 3)
    text, cond = _inputs(seed=4, text_len=8)
    voice = T3Cond(**cond)
    _favour_stop(t3, voice, text)
    kw = dict(temperature=0.8, repetition_penalty=2.0, cfg_weight=0.5, min_p=0.05, top_p=1.0)
    requests = [DecodeRequest(voice, text, SamplingParams(**kw), max_new_tokens=40,
                              generator=torch.Generator().manual_seed(s), alignment_guard=True) for s in (1, 2, 3)]
    batch = generate_speech_tokens_batch(t3, requests, prefix_cache=PrefixCache(t3), shared_prefix_slots=1)
    guarded_something = False
    for s, tokens in zip((1, 2, 3), batch):
        alone = generate_speech_tokens(t3, voice, text, max_new_tokens=40, alignment_guard=True,
                                       generator=torch.Generator().manual_seed(s), **kw)
        unguarded = generate_speech_tokens(t3, voice, text, max_new_tokens=40,
                                           generator=torch.Generator().manual_seed(s), **kw)
        assert tokens.tolist() == alone.tolist()
        guarded_something |= alone.tolist() != unguarded.tolist()
    assert guarded_something  # the guard changed an outcome: its attention was read


def test_cpus_share_long_prefixes_and_cuda_copies_them():
    assert engine_settings("fast", "cpu").t3_shared_prefix_slots == SHARED_PREFIX_SLOTS_CPU
    assert engine_settings("fast", "cuda").t3_shared_prefix_slots is None  # unmeasured there
