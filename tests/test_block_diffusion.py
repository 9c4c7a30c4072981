"""Chatterbox-Flash's block-diffusion decoding against its reference (chatterbox-flash 0.1.0, torch SDPA
engine) on the same random weights: PMI prior, every denoising step of every block, committed tokens from the
same random stream; and the batch's own guarantees (rows independent of their batch mates, input errors)."""

from __future__ import annotations

import pytest
import torch

from faster_chatterbox.engine.block_diffusion import (FlashBatch, FlashParams, FlashRequest,
                                                      generate_block_diffusion, uncond_block_prior, unmask_counts)
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config

from test_t3 import SMALL_LLAMA, _hf_llama_dict, _inputs, _randomize, _upstream_cond

pytestmark = pytest.mark.usefixtures("single_thread")

STOP = 6562


def _reference_flash(llama, seed: int = 0, stop_boost: float = 0.0):
    """The reference's ChatterboxFlashT3 at `llama`'s sizes, randomized. stop_boost makes the stop token
    likely (so that blocks end early) after the PMI prior was computed (cached in the model): a prior that
    saw the boost would cancel it."""
    import chatterbox.models.t3.modules.cond_enc as cond_enc_mod
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules.perceiver import Perceiver as UpPerceiver
    from chatterbox.models.t3.modules.t3_config import T3Config as UpT3Config
    from chatterbox_flash.model import ChatterboxFlashT3

    hp = UpT3Config()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(llama_configs.LLAMA_CONFIGS, "test_llama", _hf_llama_dict(llama))
        hp.llama_config_name = "test_llama"
        mp.setattr(cond_enc_mod, "Perceiver", lambda: UpPerceiver(32, llama.dim, llama.dim, 4))
        up = ChatterboxFlashT3(hp).eval()
    _randomize(up, seed)
    with torch.inference_mode():
        up._compute_uncond_block_prior(16, 6561, 8194, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        up.speech_head.weight[STOP] += stop_boost * up.speech_head.weight[:100].mean(0)
    return up


def _ours(up, llama) -> T3:
    with torch.device("meta"):
        ours = T3(T3Config(llama=llama, mask_token=True))
    ours.load_state_dict(up.state_dict(), strict=True, assign=True)  # [MASK] row included, unchanged
    return ours.eval()


@pytest.fixture(scope="module")
def pair(oracle):
    up = _reference_flash(SMALL_LLAMA)
    return up, _ours(up, SMALL_LLAMA)


@pytest.fixture(scope="module")
def stopping_pair(oracle):
    up = _reference_flash(SMALL_LLAMA, seed=0, stop_boost=12.0)
    return up, _ours(up, SMALL_LLAMA)


def _reference_tokens(up, cond, text, n, seed, **kw):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return up.generate(t3_cond=_upstream_cond(cond), text_tokens=text[None], total_speech_len=n,
                           backend="torch", use_cuda_graph=False, **kw)[0]


def _our_tokens(ours, cond, text, n, seed, prior=None, **kw):
    """Ours on the global RNG (generator None), as the reference draws; cut before the stop token as it is."""
    uncond_prior = kw.pop("pmi_uncond_prior_precompute", True)
    params = FlashParams(uncond_prior=uncond_prior, **{"schedule_shift" if k == "omnivoice_schedule_t_shift" else k: v
                                                        for k, v in kw.items()})
    torch.manual_seed(seed)
    tokens = generate_block_diffusion(ours, [FlashRequest(T3Cond(**cond), text, params, max_new_tokens=n)],
                                      prior=prior)[0]
    stops = (tokens == STOP).nonzero()
    return tokens[: stops[0, 0]] if len(stops) else tokens


def test_uncond_prior_matches_reference(pair):
    up, ours = pair
    with torch.inference_mode():
        reference = up._compute_uncond_block_prior(16, 6561, 8194, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(uncond_block_prior(ours, 16), reference, rtol=1e-5, atol=1e-7)


def test_unmask_counts_match_reference(oracle):
    from chatterbox_flash.model import _omnivoice_unmask_schedule

    for n in (1, 5, 16):
        for steps in (1, 2, 4, 10):
            for shift in (0.0, 0.5, 1.0, 3.0):
                assert unmask_counts(n, steps, shift) == _omnivoice_unmask_schedule(n, steps, shift)


@pytest.mark.parametrize("kw", [
    dict(),  # the reference's defaults: CFG 1, K 10, tau 0.1, Gumbel position noise
    dict(cfg_scale=0.0, num_steps=4),
    dict(time_shift_tau=0.5, num_steps=4, omnivoice_schedule_t_shift=2.0),
    dict(temperature=0.0, position_temperature=0.0, num_steps=3),
    dict(pmi_uncond_prior_precompute=False, num_steps=3),
    dict(pmi_uncond_prior_precompute=False, cfg_scale=0.0, num_steps=3),
], ids=["defaults", "no-cfg", "early", "greedy", "block-prior-cfg", "block-prior"])
def test_tokens_match_reference(pair, kw):
    up, ours = pair
    text, cond = _inputs()
    n = 40  # two whole blocks and a short last one
    reference = _reference_tokens(up, cond, text, n, 5, **kw)
    assert torch.equal(_our_tokens(ours, cond, text, n, 5, **kw), reference)


def test_denoising_steps_match_reference(pair, monkeypatch):
    """Every step's block, not only the outcome."""
    import chatterbox_flash.model as reference_model

    up, ours = pair
    text, cond = _inputs(seed=3)
    steps: dict[str, list] = {"reference": [], "ours": []}
    unmask = reference_model._pmi_count_early_step_unmask

    def reference_step(*args, **kwargs):
        out = unmask(*args, **kwargs)
        steps["reference"].append(out["xt_step"].tolist())
        return out

    our_step = FlashBatch._step

    def recorded_step(self, *args, **kwargs):
        xt = our_step(self, *args, **kwargs)
        steps["ours"].append(xt[0].tolist())
        return xt

    monkeypatch.setattr(reference_model, "_pmi_count_early_step_unmask", reference_step)
    monkeypatch.setattr(FlashBatch, "_step", recorded_step)
    kw = dict(num_steps=5, time_shift_tau=0.3)
    _reference_tokens(up, cond, text, 32, 11, **kw)
    _our_tokens(ours, cond, text, 32, 11, **kw)
    assert len(steps["reference"]) >= 6 and steps["ours"] == steps["reference"]


@pytest.mark.parametrize("seed", [0, 2])
def test_stop_token_ends_like_reference(stopping_pair, seed):
    up, ours = stopping_pair
    text, cond = _inputs()
    reference = _reference_tokens(up, cond, text, 96, seed, num_steps=4)
    assert len(reference) < 96  # the stop token was decided
    prior = next(iter(up._uncond_block_prior_cache.values()))
    assert torch.equal(_our_tokens(ours, cond, text, 96, seed, prior=prior, num_steps=4), reference)


# --- the batch's own guarantees ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_flash():
    torch.manual_seed(0)
    t3 = T3(T3Config(llama=SMALL_LLAMA, mask_token=True)).eval()
    _randomize(t3, 1)
    return t3


def _request(params: FlashParams, seed: int, n: int = 40, text_seed: int = 1, prompt_len: int = 150):
    text, cond = _inputs(seed=text_seed, text_len=12 + 3 * text_seed, prompt_len=prompt_len)
    return FlashRequest(T3Cond(**cond), text, params, max_new_tokens=n,
                        generator=torch.Generator().manual_seed(seed))


def test_batch_rows_equal_their_decode_alone(small_flash):
    """Different texts, voices, parameters, budgets (one not a whole number of blocks) in one batch: each
    request's tokens are what it gets alone from the same generator."""
    params = [FlashParams(num_steps=3), FlashParams(num_steps=5, cfg_scale=0.0, time_shift_tau=0.4),
              FlashParams(num_steps=2, temperature=0.0, uncond_prior=False)]
    budgets = [40, 16, 33]
    make = lambda: [_request(p, seed=j, n=n, text_seed=j + 1, prompt_len=100 + 20 * j)  # noqa: E731
                    for j, (p, n) in enumerate(zip(params, budgets))]
    prior = uncond_block_prior(small_flash)
    together = generate_block_diffusion(small_flash, make(), prior=prior)
    alone = [generate_block_diffusion(small_flash, [r], prior=prior)[0] for r in make()]
    assert [len(t) for t in together] == budgets
    for a, b in zip(together, alone):
        assert torch.equal(a, b)


def test_joining_between_blocks_changes_nothing(small_flash):
    """A request admitted after the batch decoded two blocks (through FlashBatch, as the scheduler does)."""
    prior = uncond_block_prior(small_flash)
    first, late = _request(FlashParams(num_steps=2), 3, n=64), _request(FlashParams(num_steps=3), 4, n=32, text_seed=5)
    batch = FlashBatch(small_flash, prior)
    batch.admit(["first"], [first])
    out = {}
    for step in range(10):
        if step == 2:
            batch.admit(["late"], [late])
        for key, tokens, _ in batch.advance():
            out[key] = list(tokens)
    assert batch.empty
    again = generate_block_diffusion(small_flash, [_request(FlashParams(num_steps=3), 4, n=32, text_seed=5)],
                                     prior=prior)[0]
    assert out["late"] == again.tolist() and len(out["first"]) == 64


@pytest.mark.parametrize("change, message", [
    (dict(params=FlashParams(num_steps=0)), "num_steps"),
    (dict(params=FlashParams(num_steps=2.5)), "num_steps"),
    (dict(params=FlashParams(temperature=-1.0)), "temperature"),
    (dict(params=FlashParams(cfg_scale=float("nan"))), "cfg_scale"),
    (dict(params=FlashParams(time_shift_tau=True)), "time_shift_tau"),
    (dict(params=FlashParams(uncond_prior=1)), "uncond_prior"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(text_tokens=torch.tensor([1.5])), "text_tokens"),
])
def test_bad_requests_are_named(small_flash, change, message):
    request = _request(FlashParams(), 0)
    for name, value in change.items():
        setattr(request, name, value)
    with pytest.raises(ValueError, match=message):
        generate_block_diffusion(small_flash, [request])


def test_autoregressive_t3_is_refused():
    t3 = T3(T3Config(llama=SMALL_LLAMA)).eval()
    with pytest.raises(ValueError, match="MASK"):
        generate_block_diffusion(t3, [_request(FlashParams(), 0)])
