"""Parity of T3 (backbone, conditioning, teacher-forced logits, sampling, decode loop) with upstream."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from faster_chatterbox.engine.sampling import SamplingParams, next_token_probs
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.llama import LlamaConfig, llama3_inv_freq
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config

from helpers import rel_error

pytestmark = pytest.mark.usefixtures("single_thread")

# Small variant: 3 layers of width 256, grouped-query attention (4 query heads over 2 KV heads).
SMALL_LLAMA = LlamaConfig(dim=256, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=512)
TOL = 1e-4


def _hf_llama_dict(cfg: LlamaConfig) -> dict:
    from chatterbox.models.t3.llama_configs import LLAMA_520M_CONFIG_DICT

    return dict(LLAMA_520M_CONFIG_DICT, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                intermediate_size=cfg.ffn_dim)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Deterministic non-trivial weights: norms around 1, linear layers std 0.02, tables and heads std 0.05."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1, generator=g)
            elif "emb" in name or "head" in name or "query" in name:
                p.normal_(0.0, 0.05, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)


def _build_upstream(oracle, llama: LlamaConfig, seed: int = 0):
    """Upstream T3 with `llama`'s sizes (registered under a new LLAMA_CONFIGS name), randomized."""
    import chatterbox.models.t3.modules.cond_enc as cond_enc_mod
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules.perceiver import Perceiver as UpPerceiver
    from chatterbox.models.t3.modules.t3_config import T3Config as UpT3Config
    from chatterbox.models.t3.t3 import T3 as UpT3

    hp = UpT3Config()
    with pytest.MonkeyPatch.context() as mp:
        if llama != LlamaConfig():
            mp.setitem(llama_configs.LLAMA_CONFIGS, "test_llama", _hf_llama_dict(llama))
            hp.llama_config_name = "test_llama"
            # upstream builds its Perceiver at the official width whatever the backbone's width
            mp.setattr(cond_enc_mod, "Perceiver", lambda: UpPerceiver(32, llama.dim, llama.dim, 4))
        up = UpT3(hp).eval()
    _randomize(up, seed)
    return up


def _build_ours(up, llama: LlamaConfig) -> T3:
    with torch.device("meta"):
        ours = T3(T3Config(llama=llama))
    ours.load_state_dict(up.state_dict(), strict=True, assign=True)  # shares upstream's tensors
    return ours.eval()


def _inputs(seed: int = 1, text_len: int = 20, prompt_len: int = 150, text_vocab: int = 704):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, text_vocab, (text_len,), generator=g)
    text[0], text[-1] = 255, 0
    cond = dict(
        speaker_emb=torch.randn(1, 256, generator=g),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, prompt_len), generator=g),
        emotion_adv=0.7 * torch.ones(1, 1, 1),
    )
    return text, cond


def _upstream_cond(cond: dict):
    from chatterbox.models.t3.modules.cond_enc import T3Cond as UpT3Cond

    return UpT3Cond(**cond)


def _upstream_logits(up, cond: dict, text, speech_tokens, cfg: bool):
    """Upstream HF forward on upstream's own inference-layout embeddings -> (R, S + 1, V)."""
    rows = 2 if cfg else 1
    bos = torch.full((rows, 1), 6561)
    with torch.inference_mode():
        embeds, _ = up.prepare_input_embeds(t3_cond=_upstream_cond(cond), text_tokens=text.expand(rows, -1),
                                            speech_tokens=bos, cfg_weight=0.5 if cfg else 0.0)
        tail_tokens = torch.cat((bos[:1, 0], speech_tokens))
        tail = up.speech_emb(tail_tokens) + up.speech_pos_emb.get_fixed_embedding(torch.arange(len(tail_tokens)))
        x = torch.cat((embeds, tail.expand(rows, -1, -1)), dim=1)
        h = up.tfmr(inputs_embeds=x).last_hidden_state
        return up.speech_head(h[:, embeds.shape[1]:])


def _upstream_generate(up, cond: dict, text, n: int, **kw):
    # cfg_weight == 0 crashes upstream with one text row; two identical conditional rows are the same
    # computation as our single row (cond + 0 * (cond - cond)).
    with torch.inference_mode():
        return up.inference(t3_cond=_upstream_cond(cond), text_tokens=text.expand(2, -1), max_new_tokens=n,
                            **kw)[0]


@pytest.fixture(scope="module")
def small(oracle):
    up = _build_upstream(oracle, SMALL_LLAMA)
    return up, _build_ours(up, SMALL_LLAMA)


@pytest.fixture(scope="module")
def full(oracle):
    up = _build_upstream(oracle, LlamaConfig(), seed=3)
    return up, _build_ours(up, LlamaConfig())


# --- backbone pieces -------------------------------------------------------------------------------


def test_rope_inv_freq_matches_hf_bitwise(oracle):
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from chatterbox.models.t3.llama_configs import LLAMA_520M_CONFIG_DICT

    hf = LlamaRotaryEmbedding(HFLlamaConfig(**LLAMA_520M_CONFIG_DICT))
    assert torch.equal(llama3_inv_freq(LlamaConfig()), hf.inv_freq)


def test_kv_cache_decode_equals_full_forward(small):
    _, ours = small
    tfmr = ours.tfmr
    torch.manual_seed(5)
    x = torch.randn(2, 12, SMALL_LLAMA.dim)
    pos = torch.arange(12)
    with torch.inference_mode():
        full = tfmr(x, pos, tfmr.new_cache(2, 12))
        cache = tfmr.new_cache(2, 32)  # longer than needed
        steps = [tfmr(x[:, :8], pos[:8], cache, kv_len=8)]
        steps += [tfmr(x[:, i : i + 1], pos[i : i + 1], cache, kv_len=i + 1) for i in range(8, 12)]
    assert rel_error(torch.cat(steps, dim=1), full) < 1e-5


# --- conditioning and teacher-forced logits ----------------------------------------------------------


def test_state_dict_keys_match_upstream(full):
    up, ours = full
    up_sd, our_sd = up.state_dict(), ours.state_dict()
    assert len(up_sd) == 292
    assert sorted(our_sd) == sorted(up_sd)
    assert all(our_sd[k].shape == up_sd[k].shape for k in up_sd)


def test_cond_embeds_match_and_do_not_mutate(small):
    up, ours = small
    text, cond = _inputs()
    mine = T3Cond(**cond)
    with torch.inference_mode():
        ref = up.prepare_conditioning(_upstream_cond(cond))
        got = ours.cond_embeds(mine)
    assert got.shape == (1, 34, SMALL_LLAMA.dim)
    assert rel_error(got, ref) < TOL
    assert mine.cond_prompt_speech_emb is None


@pytest.mark.parametrize("cfg", [True, False])
def test_teacher_forced_logits_match(small, cfg):
    up, ours = small
    text, cond = _inputs()
    speech = torch.randint(0, 6561, (15,), generator=torch.Generator().manual_seed(2))
    ref = _upstream_logits(up, cond, text, speech, cfg)
    with torch.inference_mode():
        got = ours(T3Cond(**cond), text, speech, cfg=cfg)
    assert got.shape == (2 if cfg else 1, 16, 8194)
    assert rel_error(got, ref) < TOL
    if cfg:  # the unconditional row really differs
        assert rel_error(got[1], got[0]) > 1e-2


def test_mismapped_weight_breaks_parity(oracle):
    up = _build_upstream(oracle, SMALL_LLAMA)
    sd = up.state_dict()
    sd["tfmr.layers.0.self_attn.q_proj.weight"], sd["tfmr.layers.1.self_attn.q_proj.weight"] = (
        sd["tfmr.layers.1.self_attn.q_proj.weight"], sd["tfmr.layers.0.self_attn.q_proj.weight"])
    ours = T3(T3Config(llama=SMALL_LLAMA)).eval()
    ours.load_state_dict(sd, strict=True)
    text, cond = _inputs()
    speech = torch.randint(0, 6561, (4,), generator=torch.Generator().manual_seed(2))
    ref = _upstream_logits(up, cond, text, speech, cfg=True)
    with torch.inference_mode():
        got = ours(T3Cond(**cond), text, speech, cfg=True)
    assert rel_error(got, ref) > 1e-2


# --- sampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    SamplingParams(0.8, 0.5, 1.2, 0.05, 1.0),
    SamplingParams(0.6, 1.5, 2.0, 0.1, 0.8),
    SamplingParams(1.3, 0.3, 1.0, 0.0, 0.95),
])
def test_processors_bit_identical_to_hf(oracle, params):
    from transformers.generation.logits_process import (
        MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopPLogitsWarper)

    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(2, 8194, generator=g)
    ids = torch.cat((torch.tensor([[6561]]), torch.randint(0, 6561, (1, 30), generator=g)), dim=1)
    seen = torch.zeros(1, 8194, dtype=torch.bool).scatter_(1, ids, True)

    cond, uncond = logits[0:1], logits[1:2]
    ref = cond + torch.as_tensor(params.cfg_weight) * (cond - uncond)
    ref = RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty))(ids, ref)
    if params.temperature != 1.0:
        ref = ref / params.temperature
    ref = MinPLogitsWarper(params.min_p)(ids, ref)
    ref = TopPLogitsWarper(params.top_p)(ids, ref)
    ref = torch.softmax(ref, dim=-1)
    got = next_token_probs(logits, seen, params)
    assert torch.equal(got, ref)
    assert (got > 0).sum() > 1


# --- the decode loop --------------------------------------------------------------------------------

GEN_CASES = [
    dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=1.0),
    dict(temperature=1.0, cfg_weight=0.3, repetition_penalty=1.0, min_p=0.0, top_p=0.9),
    dict(temperature=0.6, cfg_weight=1.0, repetition_penalty=2.0, min_p=0.1, top_p=0.8),
    dict(temperature=0.9, cfg_weight=0.0, repetition_penalty=1.3, min_p=0.02, top_p=1.0),
]


@pytest.mark.parametrize("kw", GEN_CASES)
def test_generate_matches_upstream(small, kw):
    up, ours = small
    text, cond = _inputs()
    torch.manual_seed(11)
    ref = _upstream_generate(up, cond, text, 40, **kw)
    torch.manual_seed(11)
    got = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=40, **kw)
    assert got.shape == (40,)
    assert torch.equal(got, ref)
    assert len(set(got.tolist())) > 5  # really sampling, not a constant


def test_generate_stops_on_stop_token(oracle):
    up = _build_upstream(oracle, SMALL_LLAMA)
    text, cond = _inputs()
    # From speech position 10 on, a large offset dominates the residual stream; the stop token's head
    # row points along it, so the stop token becomes likely after ~10 tokens.
    with torch.inference_mode():
        direction = torch.randn(SMALL_LLAMA.dim, generator=torch.Generator().manual_seed(9))
        up.speech_pos_emb.emb.weight[10:] += 20 * direction / direction.norm()
        stop_row = up.tfmr.norm.weight * direction
        up.speech_head.weight[6562] = 0.35 * stop_row / stop_row.norm()
    ours = _build_ours(up, SMALL_LLAMA)
    kw = dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=1.0)
    torch.manual_seed(7)
    ref = _upstream_generate(up, cond, text, 40, **kw)
    torch.manual_seed(7)
    got = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=40, **kw)
    assert 5 <= len(ref) < 40 and ref[-1] == 6562 and 6562 not in ref[:-1].tolist()
    assert torch.equal(got, ref)


# --- official size ----------------------------------------------------------------------------------


def test_full_size_generate_and_logits(full):
    up, ours = full
    text, cond = _inputs(text_len=24)
    kw = dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=1.0)
    torch.manual_seed(21)
    ref = _upstream_generate(up, cond, text, 20, **kw)
    torch.manual_seed(21)
    got = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=20, **kw)
    assert torch.equal(got, ref)
    ref_logits = _upstream_logits(up, cond, text, ref[:-1], cfg=True)
    with torch.inference_mode():
        got_logits = ours(T3Cond(**cond), text, ref[:-1], cfg=True)
    assert rel_error(got_logits, ref_logits) < TOL


def test_t3cond_to_casts_floats_only():
    cond = T3Cond(speaker_emb=torch.randn(1, 256), cond_prompt_speech_tokens=torch.arange(5)[None],
                  emotion_adv=torch.ones(1, 1, 1))
    half = cond.to(dtype=torch.float16)
    assert half is not cond and cond.speaker_emb.dtype == torch.float32
    assert half.speaker_emb.dtype == torch.float16 and half.emotion_adv.dtype == torch.float16
    assert half.cond_prompt_speech_tokens.dtype == torch.long
    assert dataclasses.asdict(T3Cond(torch.zeros(1, 256)))["emotion_adv"] == 0.5


def test_changed_sampling_step_is_detected(small, monkeypatch):
    """The token parity check catches an algorithm change: classifier-free guidance pushed the wrong way."""
    import faster_chatterbox.engine.sampling as sampling

    up, ours = small
    text, cond = _inputs()
    kw = GEN_CASES[0]
    monkeypatch.setattr(sampling, "cfg_combine", lambda logits, w: logits[:1] + w * (logits[1:] - logits[:1]))
    torch.manual_seed(11)
    ref = _upstream_generate(up, cond, text, 40, **kw)
    torch.manual_seed(11)
    got = generate_speech_tokens(ours, T3Cond(**cond), text, max_new_tokens=40, **kw)
    assert not torch.equal(got, ref)
