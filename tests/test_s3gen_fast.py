"""S3Gen's fast paths: solve selection, CFG-free decoding, bf16, batched chunks, shorter prompts, meanflow decoder."""

from __future__ import annotations

import copy

import pytest
import torch

from faster_chatterbox.checkpoint import load_weights, read_safetensors, skip_weight_init
from faster_chatterbox.config import small_config
from faster_chatterbox.models.s3gen import MEANFLOW_FILE, S3Gen, S3GenConfig, meanflow_config, trim_reference
from faster_chatterbox.random_checkpoint import _randomize_, _s3gen_state, write_random_checkpoint

from helpers import rel_error

pytestmark = pytest.mark.usefixtures("single_thread")

BF16_MEL_TOL = 5e-3  # bf16 against fp32, max-abs relative mel error; measured 4e-4 on the small config


def _s3gen(cfg: S3GenConfig, seed: int) -> S3Gen:
    model = S3Gen(cfg).eval()
    _randomize_(model, torch.Generator().manual_seed(seed))
    model.mel2wav.fold_weight_norm()
    return model


@pytest.fixture(scope="module")
def s3gen() -> S3Gen:
    return _s3gen(small_config().s3gen, seed=0)


def _ref(seed: int, n_prompt: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_token=torch.randint(0, 6561, (1, n_prompt), generator=g),
                prompt_token_len=torch.tensor([n_prompt]),
                prompt_feat=torch.randn(1, 2 * n_prompt, 80, generator=g) - 5,
                prompt_feat_len=None, embedding=torch.randn(1, 192, generator=g))


def _tokens(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(seed))


def _noise(seed: int, n_prompt: int, n_tokens: int) -> torch.Tensor:
    return torch.randn(1, 80, 2 * (n_prompt + n_tokens), generator=torch.Generator().manual_seed(seed))


def _capture_mels(model: S3Gen, monkeypatch) -> list[torch.Tensor]:
    """Record the mels S3Gen hands to HiFT (HiFT's own random draws then play no part in the comparison)."""
    mels: list[torch.Tensor] = []

    def vocode(rows, f0_smoothing=None, generators=None):
        mels.extend(rows)
        return [torch.zeros(1, row.size(2) * 480) for row in rows]

    monkeypatch.setattr(model, "_vocode_rows", vocode)
    return mels


@pytest.mark.parametrize("kwargs", [dict(), dict(solver="ab2", schedule="sway", sway_coef=-0.6),
                                    dict(solver="heun"), dict(cfg_rate=0.0)])
def test_solve_arguments_reach_the_flow(s3gen, kwargs):
    ref, tokens, noise = _ref(1, 12), _tokens(2, 9), _noise(3, 12, 9)
    with torch.inference_mode():
        torch.manual_seed(0)
        wav = s3gen.inference(tokens, ref, 4, noise=noise, **kwargs)
        torch.manual_seed(0)
        mel = s3gen.flow.inference(tokens[None], torch.tensor([9]), ref["prompt_token"], ref["prompt_token_len"],
                                   ref["prompt_feat"], ref["embedding"], 4, noise=noise, **kwargs)
        expected, _ = s3gen.mel2wav.inference(mel)
        expected[:, :s3gen.trim_fade.numel()] *= s3gen.trim_fade
    assert wav.shape == (1, 9 * 960) and wav.dtype == torch.float32
    assert torch.equal(wav, expected)


def test_default_noise_is_upstreams_draw(s3gen):
    ref, tokens = _ref(4, 10), _tokens(5, 6)
    with torch.inference_mode():
        torch.manual_seed(3)
        drawn = s3gen.inference(tokens, ref, 2)
        torch.manual_seed(3)
        noise = torch.randn(1, 80, 32)
        given = s3gen.inference(tokens, ref, 2, noise=noise)
    assert torch.equal(drawn, given)


def test_cfg_free_runs_one_estimator_row(s3gen, monkeypatch):
    estimator = s3gen.flow.decoder.estimator
    rows: list[int] = []
    forward = estimator.forward
    monkeypatch.setattr(estimator, "forward", lambda x, *a, **k: rows.append(x.size(0)) or forward(x, *a, **k))
    ref, tokens, noise = _ref(6, 8), _tokens(7, 5), _noise(8, 8, 5)
    with torch.inference_mode():
        guided = s3gen.inference(tokens, ref, 3, noise=noise)
        assert rows == [2, 2, 2]
        rows.clear()
        free = s3gen.inference(tokens, ref, 3, noise=noise, cfg_rate=0.0)
        assert rows == [1, 1, 1]
    assert not torch.equal(guided, free)


def test_bf16_decoder_is_close_to_fp32(s3gen, monkeypatch):
    bf16 = copy.deepcopy(s3gen)
    bf16.set_decoder_dtype(torch.bfloat16)
    assert bf16.flow.encoder_proj.weight.dtype == torch.bfloat16
    assert bf16.mel2wav.conv_pre.weight.dtype == torch.bfloat16  # (F0 predictor and source stay float32)
    assert next(bf16.tokenizer.parameters()).dtype == next(bf16.speaker_encoder.parameters()).dtype == torch.float32
    ref, tokens, noise = _ref(9, 20), _tokens(10, 15), _noise(11, 20, 15)
    mels = {}
    for name, model in (("fp32", s3gen), ("bf16", bf16)):
        mels[name] = _capture_mels(model, monkeypatch)
        with torch.inference_mode():
            model.inference(tokens, ref, 4, noise=noise)
            model.inference(tokens, ref, 4, noise=noise, solver="ab2", schedule="sway", sway_coef=-0.6)
            model.inference_batch([tokens, tokens[:4]], [ref, ref], 2, noises=[noise, noise[:, :, :48]])
    for fp32, low in zip(mels["fp32"], mels["bf16"]):
        assert low.dtype == torch.float32  # the ODE state stays float32
        assert rel_error(low, fp32) < BF16_MEL_TOL
    with torch.inference_mode():
        wav = bf16.inference(tokens, ref, 2, noise=noise)
    assert wav.dtype == torch.float32 and bool(wav.isfinite().all())
    with pytest.raises(ValueError, match="floating-point"):
        bf16.set_decoder_dtype(torch.int8)
    mixed = copy.deepcopy(s3gen)
    mixed.set_decoder_dtype(torch.bfloat16, vocoder_dtype=torch.float32)
    assert mixed.flow.encoder_proj.weight.dtype == torch.bfloat16
    assert mixed.mel2wav.conv_pre.weight.dtype == torch.float32


def test_batched_rows_equal_unbatched(s3gen, monkeypatch):
    """Rows of different lengths and voices (different prompt lengths, one row much shorter) through one batch."""
    refs = [_ref(20, 30), _ref(21, 12), _ref(22, 25)]
    tokens = [_tokens(23, 20), _tokens(24, 33), _tokens(25, 2)]
    noises = [_noise(26 + i, r["prompt_token"].size(1), t.numel()) for i, (r, t) in enumerate(zip(refs, tokens))]
    mels = _capture_mels(s3gen, monkeypatch)
    with torch.inference_mode():
        wavs = s3gen.inference_batch(tokens, refs, 3, noises=noises)
        batched = list(mels)
        for kwargs in (dict(), dict(solver="ab2", schedule="sway", sway_coef=-0.6)):
            mels.clear()
            s3gen.inference_batch(tokens, refs, 3, noises=noises, **kwargs)
            batched_kw = list(mels)
            mels.clear()
            for ref, tok, noise in zip(refs, tokens, noises):
                s3gen.inference(tok, ref, 3, noise=noise, **kwargs)
            for row, single, tok in zip(batched_kw, mels, tokens):
                assert row.shape == single.shape == (1, 80, 2 * tok.numel())
                assert rel_error(row, single) < 1e-5
    assert [w.shape for w in wavs] == [(1, 960 * t.numel()) for t in tokens]
    assert len(batched) == 3


def test_batched_default_noise_is_drawn_row_by_row(s3gen, monkeypatch):
    refs, tokens = [_ref(30, 10), _ref(31, 6)], [_tokens(32, 4), _tokens(33, 7)]
    mels = _capture_mels(s3gen, monkeypatch)
    with torch.inference_mode():
        torch.manual_seed(5)
        s3gen.inference_batch(tokens, refs, 2)
        torch.manual_seed(5)
        noises = [torch.randn(1, 80, 28), torch.randn(1, 80, 26)]
        s3gen.inference_batch(tokens, refs, 2, noises=noises)
    assert all(torch.equal(a, b) for a, b in zip(mels[:2], mels[2:]))


def test_render_with_a_voice_per_chunk_equals_each_chunk_alone_in_its_voice(s3gen):
    """Chunks of several calls in one render: each in its own voice (prompts of 12 and 20 tokens, the longer cut
    to 15 by prompt_seconds), stream and length, one chunk empty; each equals its render alone."""
    refs = [_ref(70, 12), _ref(71, 20), _ref(70, 12), _ref(72, 16)]
    tokens = [_tokens(73, 9).tolist(), _tokens(74, 14).tolist(), [], _tokens(75, 4).tolist()]

    def streams():
        return [torch.Generator().manual_seed(80 + i) for i in range(len(tokens))]

    solve = dict(n_timesteps=2, prompt_seconds=0.6)
    together = s3gen.render(tokens, refs, streams(), batch=4, **solve)
    alone = [s3gen.render([t], r, [g], **solve)[0] for t, r, g in zip(tokens, refs, streams())]
    assert together[2].shape == (0,) and alone[2].shape == (0,)
    for row, single, t in zip(together, alone, tokens):
        assert row.shape == single.shape == (960 * len(t),)
        if len(t):
            assert rel_error(torch.from_numpy(row), torch.from_numpy(single)) < 1e-4
    torch.manual_seed(3)  # on the global RNG: chunk after chunk, each in its voice
    drawn = s3gen.render(tokens, refs, n_timesteps=2)
    torch.manual_seed(3)
    assert all((a == b).all() for a, b in zip(drawn, [s3gen.render([t], r, n_timesteps=2)[0]
                                                      for t, r in zip(tokens, refs)]))


def test_render_input_errors(s3gen):
    ref, tokens = _ref(76, 5), _tokens(77, 3).tolist()
    with pytest.raises(ValueError, match="ref must have one entry per chunk, got 1 for 2"):
        s3gen.render([tokens, tokens], [ref])
    with pytest.raises(ValueError, match="generators must have one entry per chunk, got 1 for 2"):
        s3gen.render([tokens, tokens], ref, [torch.Generator()])
    with pytest.raises(TypeError, match="ref must be a voice's reference dict"):
        s3gen.render([tokens], None)


def test_batch_input_errors(s3gen):
    ref, tokens = _ref(40, 5), _tokens(41, 3)
    with pytest.raises(ValueError, match="one reference per chunk"):
        s3gen.inference_batch([tokens, tokens], [ref])
    with pytest.raises(ValueError, match="noise of row 0"):
        s3gen.inference_batch([tokens], [ref], 2, noises=[torch.randn(1, 80, 10)])
    with pytest.raises(ValueError, match="speech tokens"):
        s3gen.inference(torch.tensor([6561]), ref)
    with pytest.raises(ValueError, match="no speech tokens"):
        s3gen.inference(torch.tensor([], dtype=torch.long), ref)


def test_trim_reference(s3gen):
    ref = _ref(50, 250)  # 10 s
    short = trim_reference(ref, 3.0)
    assert short["prompt_token"].shape == (1, 75) and short["prompt_feat"].shape == (1, 150, 80)
    assert int(short["prompt_token_len"]) == 75
    assert torch.equal(short["prompt_token"], ref["prompt_token"][:, :75])
    assert torch.equal(short["prompt_feat"], ref["prompt_feat"][:, :150])
    assert short["embedding"] is ref["embedding"] and ref["prompt_token"].shape == (1, 250)  # input untouched
    assert trim_reference(ref, 60.0)["prompt_token"].shape == (1, 250)
    for bad in (0, -1.0, float("nan"), 0.01):
        with pytest.raises(ValueError):
            trim_reference(ref, bad)
    tokens = _tokens(51, 5)
    with torch.inference_mode():
        wav = s3gen.inference(tokens, trim_reference(_ref(52, 30), 0.4), 2)
    assert wav.shape == (1, 5 * 960)


def test_meanflow_decoder_small(monkeypatch):
    cfg = meanflow_config(small_config().s3gen)
    assert cfg.flow.estimator.meanflow and not small_config().s3gen.flow.estimator.meanflow
    model = _s3gen(cfg, seed=60)
    steps: list[int] = []
    forward = model.flow.decoder.estimator.forward
    monkeypatch.setattr(model.flow.decoder.estimator, "forward",
                        lambda x, *a, **k: steps.append(x.size(0)) or forward(x, *a, **k))
    ref, tokens = _ref(61, 10), _tokens(62, 6)
    with torch.inference_mode():
        torch.manual_seed(1)
        wav = model.inference(tokens, ref)
        assert steps == [1, 1]  # 2 steps by default, no CFG rows
        torch.manual_seed(1)
        [batched] = model.inference_batch([tokens], [ref])
    assert wav.shape == (1, 6 * 960)
    assert rel_error(batched, wav) < 1e-5
    with pytest.raises(ValueError, match="meanflow"):
        model.inference(tokens, ref, solver="ab2")


def test_random_checkpoint_with_meanflow_loads(tmp_path):
    directory = write_random_checkpoint(tmp_path / "ckpt", small=True, meanflow=True)
    cfg = meanflow_config(small_config().s3gen)
    with skip_weight_init():
        model = S3Gen(cfg)
    load_weights(model, read_safetensors(directory / MEANFLOW_FILE), directory / MEANFLOW_FILE,
                 ignore_unexpected=True)
    state = read_safetensors(directory / MEANFLOW_FILE)
    assert "flow.decoder.estimator.time_embed_mixer.weight" in state
    assert set(state) == set(_s3gen_state(model))  # every tensor, incl. the tokenizer buffers upstream reads
    base = read_safetensors(directory / "s3gen.safetensors")
    assert torch.equal(state["tokenizer.quantizer._codebook.project_down.weight"],
                       base["tokenizer.quantizer._codebook.project_down.weight"])
    assert not torch.equal(state["flow.encoder_proj.weight"], base["flow.encoder_proj.weight"])
    model.mel2wav.fold_weight_norm()
    with torch.inference_mode():
        wav = model.eval().inference(_tokens(70, 4), _ref(71, 8))
    assert wav.shape == (1, 4 * 960) and bool(wav.isfinite().all())


def test_meanflow_parity_full_size(oracle):
    """Our meanflow S3Gen against upstream's S3Gen(meanflow=True) (Turbo's decoder), strictly loaded from our
    tensors, through `inference` (2 steps, its noise draw, HiFT, the trim) from the same seed."""
    from chatterbox.models.s3gen import S3Gen as UpS3Gen

    with skip_weight_init():
        ours = S3Gen(meanflow_config())
    for part in (ours.flow, ours.mel2wav):
        _randomize_(part, torch.Generator().manual_seed(80))
    with skip_weight_init():
        up = UpS3Gen(meanflow=True)
    up.load_state_dict(_s3gen_state(ours), strict=True)
    up.eval()
    ours.eval().mel2wav.fold_weight_norm()
    ref, tokens = _ref(81, 25), _tokens(82, 15)
    with torch.inference_mode():
        torch.manual_seed(83)
        expected, _ = up.inference(tokens, ref_dict={k: v for k, v in ref.items()}, n_cfm_timesteps=2)
        torch.manual_seed(83)
        wav = ours.inference(tokens, ref)
    assert wav.shape == expected.shape
    assert float((wav - expected).abs().max()) < 1e-4
