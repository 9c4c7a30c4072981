"""The multilingual T3's alignment guard (engine/alignment.py) against upstream 0.1.7's AlignmentStreamAnalyzer:
the same tokens from the same weights and seed, in the exact loop and in a batch."""

from __future__ import annotations

import pytest
import torch

from faster_chatterbox.engine.batch_decode import DecodeRequest, generate_speech_tokens_batch
from faster_chatterbox.engine.sampling import SamplingParams
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import LlamaConfig
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config

from test_t3 import _build_upstream, _inputs, _upstream_cond

pytestmark = pytest.mark.usefixtures("single_thread")

# Enough layers and heads for upstream's aligned heads (layers 9, 12, 13; heads 2, 11, 15), narrow.
GUARD_LLAMA = LlamaConfig(dim=128, n_layers=14, n_heads=16, n_kv_heads=16, head_dim=8, ffn_dim=128)
MTL_TEXT_VOCAB = 2454


def _build(oracle, seed=0):
    from chatterbox.models.t3.modules import t3_config

    with pytest.MonkeyPatch.context() as mp:  # upstream's multilingual config is the text vocabulary's size
        mp.setattr(t3_config.T3Config.__init__, "__defaults__", (MTL_TEXT_VOCAB,))
        up = _build_upstream(oracle, GUARD_LLAMA, seed)
    assert up.hp.is_multilingual
    with torch.device("meta"):
        ours = T3(T3Config(text_tokens_dict_size=MTL_TEXT_VOCAB, llama=GUARD_LLAMA))
    ours.load_state_dict(up.state_dict(), strict=True, assign=True)
    return up, ours.eval()


def _favour_stop(ours: T3, cond: T3Cond, text: torch.Tensor) -> None:
    """Point the stop token's output row along the backbone's mean hidden state, so that unguarded decoding
    stops within a few tokens (in place: upstream's model shares the tensor)."""
    with torch.inference_mode():
        x = ours.prefix_embeds(cond, text, cfg=False)
        h = ours.tfmr(x, torch.arange(x.shape[1]), ours.tfmr.new_cache(1, x.shape[1])).mean(dim=(0, 1))
    with torch.no_grad():
        ours.speech_head.weight[ours.cfg.stop_speech_token] = 40 * h / h.norm()


# text_len 8: the guard holds the stop token back; 30 at a low temperature without penalty: a repeated token
# forces the stop. (Upstream crashes on texts of <= 5 tokens: max() over no columns.)
@pytest.mark.parametrize("text_len, temperature, penalty", [(8, 0.8, 2.0), (30, 0.05, 1.0)])
def test_guarded_tokens_match_upstream_analyzer(oracle, text_len, temperature, penalty):
    up, ours = _build(oracle)
    text, cond = _inputs(seed=7, text_len=text_len, text_vocab=MTL_TEXT_VOCAB)
    if text_len == 8:
        _favour_stop(ours, T3Cond(**cond), text)
    kw = dict(temperature=temperature, cfg_weight=0.5, repetition_penalty=penalty, min_p=0.05, top_p=1.0)
    torch.manual_seed(11)
    with torch.inference_mode():
        ref = up.inference(t3_cond=_upstream_cond(cond), text_tokens=text.expand(2, -1), max_new_tokens=60, **kw)[0]
    torch.manual_seed(11)
    got = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=60, alignment_guard=True, **kw)
    torch.manual_seed(11)
    unguarded = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=60, **kw)
    assert got.tolist() == ref.tolist()
    assert got.tolist() != unguarded.tolist(), got  # the guard changed the outcome
    batch = generate_speech_tokens_batch(ours, [DecodeRequest(T3Cond(**cond), text, SamplingParams(**kw),
                                                              max_new_tokens=60,
                                                              generator=torch.Generator().manual_seed(s),
                                                              alignment_guard=True) for s in (1, 2)])
    for s, tokens in zip((1, 2), batch):
        alone = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=60, alignment_guard=True,
                                       generator=torch.Generator().manual_seed(s), **kw)
        assert tokens.tolist() == alone.tolist()
