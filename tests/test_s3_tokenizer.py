"""Parity of our S3 tokenizer v2 with upstream chatterbox's S3Tokenizer (random weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faster_chatterbox.models.s3_tokenizer import S3_SR, S3Tokenizer, S3TokenizerConfig
from helpers import rel_error

RECOMPUTED_BUFFERS = {"_mel_filters", "window"}


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic non-trivial weights: LN weights ~ 1 + noise, biases small, matrices ~ 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("ln.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))


def _speechy(seconds: float, seed: int) -> np.ndarray:
    """A 16 kHz float32 clip with a gliding harmonic tone, syllable-rate envelope and noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * S3_SR)) / S3_SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / S3_SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    noise = rng.standard_normal(t.shape) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    return (0.1 * envelope * voiced + 0.03 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def pair(oracle):
    """(upstream, ours): official-size tokenizers sharing random weights."""
    torch.manual_seed(0)
    ref = oracle.models.s3tokenizer.S3Tokenizer("speech_tokenizer_v2_25hz").eval()
    _randomize(ref)
    ours = S3Tokenizer().eval()
    sd = {k: v for k, v in ref.state_dict().items() if k not in RECOMPUTED_BUFFERS}
    ours.load_state_dict(sd, strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def clips():
    return {"short": _speechy(1.3, 1), "mid": _speechy(3.0, 2), "odd": _speechy(2.17, 3)}


def test_state_dict_keys(pair):
    ref, ours = pair
    assert set(ours.state_dict()) == set(ref.state_dict()) - RECOMPUTED_BUFFERS
    for name in RECOMPUTED_BUFFERS:  # our recomputed buffers equal upstream's librosa / hann ones
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name


def test_log_mel(pair, clips):
    ref, ours = pair
    for wav in clips.values():
        x = torch.from_numpy(wav)[None]
        want = ref.log_mel_spectrogram(x)
        got = ours.log_mel_spectrogram(x)
        assert rel_error(got, want) < 1e-5
        assert got.shape == (1, 128, len(wav) // 160)


def test_encoder_hidden(pair, clips):
    ref, ours = pair
    mels = [ref.log_mel_spectrogram(torch.from_numpy(clips[k])[None])[0] for k in ("short", "mid")]
    lens = torch.tensor([m.shape[1] for m in mels], dtype=torch.int32)
    batch = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
    with torch.inference_mode():
        want, want_lens = ref.encoder(batch, lens)
        got, got_lens = ours.encoder(batch, lens)
    assert torch.equal(got_lens.long(), want_lens.long())
    for b, n in enumerate(want_lens.tolist()):  # padded positions are don't-care in principle, check valid ones
        assert rel_error(got[b, :n], want[b, :n]) < 1e-4
    assert rel_error(got, want) < 1e-4


@pytest.mark.parametrize("max_len", [None, 20])
@pytest.mark.parametrize("batch", [("short",), ("short", "mid"), ("odd", "short", "mid")])
def test_tokens(pair, clips, batch, max_len):
    ref, ours = pair
    wavs = [clips[k] for k in batch]
    want, want_lens = ref(wavs, max_len=max_len)
    got, got_lens = ours(wavs, max_len=max_len)
    assert got.dtype == torch.long and got_lens.dtype == torch.long
    assert torch.equal(got_lens, want_lens)
    assert got.shape == want.shape
    match = (got == want).float().mean().item()
    assert match == 1.0, f"token match rate {match:.4f}"
    assert want.unique().numel() > 5  # the random weights give varied codes, not one repeated id


def test_tensor_input_like_embed_ref(pair, clips):
    """S3Gen.embed_ref passes a (1, T) tensor, which is iterated row by row."""
    ref, ours = pair
    wav = torch.from_numpy(clips["mid"])[None]
    want, want_lens = ref(wav)
    got, got_lens = ours(wav)
    assert torch.equal(got, want) and torch.equal(got_lens, want_lens)


def test_mismapped_weight_is_detected(pair, clips):
    """Swapping two same-shape weights of ours (then restoring them) must trip the parity check."""
    ref, ours = pair
    mel = ref.log_mel_spectrogram(torch.from_numpy(clips["short"])[None])
    lens = torch.tensor([mel.shape[-1]])
    attn = ours.encoder.blocks[2].attn
    with torch.inference_mode():
        want, _ = ref.encoder(mel, lens)
        good, _ = ours.encoder(mel, lens)
        attn.query.weight, attn.key.weight = attn.key.weight, attn.query.weight
        try:
            bad, _ = ours.encoder(mel, lens)
        finally:
            attn.query.weight, attn.key.weight = attn.key.weight, attn.query.weight
    assert rel_error(good, want) < 1e-4
    assert rel_error(bad, want) > 1e-2


def test_windowed_long_audio(oracle):
    """Mels over 30 s take upstream's sliding-window path; a small config keeps this cheap."""
    up = oracle.models.s3tokenizer.s3tokenizer
    small = dict(n_audio_state=128, n_audio_head=2, n_audio_layer=2)  # head_dim 64 as upstream's rotary table
    ref = up.S3TokenizerV2("speech_tokenizer_v2_25hz", up.ModelConfig(**small)).eval()
    _randomize(ref, seed=1)
    ours = S3Tokenizer(S3TokenizerConfig(**small)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)

    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([5510, 1234, 3001], dtype=torch.int32)  # 3 windows (last one tiny), short, 2 windows
    mels = torch.randn(3, 128, 5510, generator=g)
    mels *= torch.arange(5510)[None, None, :] < lens[:, None, None]
    with torch.inference_mode():
        want, want_lens = ref.quantize(mels, lens)
        got, got_lens = ours.quantize(mels, lens)
    assert torch.equal(got_lens, want_lens.long())
    assert torch.equal(got, want.long())
