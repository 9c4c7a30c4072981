"""Parity of the two speaker encoders and their front-ends against upstream chatterbox.

CAMPPlus (S3Gen's x-vector) with its Kaldi fbank, and the voice encoder (T3's speaker embedding)
with its silence trim and mel. Both models run at full size on random weights.
"""

import importlib

import numpy as np
import pytest
import torch

from faster_chatterbox.audio.kaldi_fbank import kaldi_fbank
from faster_chatterbox.models.campplus import CAMPPlus
from faster_chatterbox.models.voice_encoder import VoiceEncoder

from helpers import rel_error

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("single_thread")]

SR = 16000


def speechlike(seconds: float, seed: int, silence: float = 0.0) -> np.ndarray:
    """A voiced, amplitude-modulated tone plus noise, optionally framed by near-silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t) + 20 * seed
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 6))
    x = 0.2 * voiced * (1 + 0.6 * np.sin(2 * np.pi * 3.1 * t)) + 0.02 * rng.standard_normal(t.size)
    pad = int(silence * SR)
    x = np.concatenate([1e-4 * rng.standard_normal(pad), x, 1e-4 * rng.standard_normal(pad)])
    return x.astype(np.float32)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic non-trivial weights: fan-in scaled conv/linear/LSTM weights, perturbed BatchNorms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight") and "lstm" not in name:  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(1, 1000, (1,), generator=g)))


def swapped(state: dict, a: str, b: str) -> dict:
    state = dict(state)
    state[a], state[b] = state[b], state[a]
    return state


@pytest.fixture(scope="module")
def campplus_pair(oracle):
    xvector = importlib.import_module("chatterbox.models.s3gen.xvector")
    upstream = xvector.CAMPPlus(memory_efficient=False).eval()
    randomize_(upstream)
    ours = CAMPPlus().eval()
    ours.load_state_dict(upstream.state_dict())
    return upstream, ours


@pytest.fixture(scope="module")
def voice_encoder_pair(oracle):
    ve = importlib.import_module("chatterbox.models.voice_encoder")
    upstream = ve.VoiceEncoder().eval()
    randomize_(upstream, seed=1)
    ours = VoiceEncoder().eval()
    ours.load_state_dict(upstream.state_dict())
    return upstream, ours


def test_state_dict_keys(campplus_pair, voice_encoder_pair):
    for upstream, ours in (campplus_pair, voice_encoder_pair):
        theirs, mine = upstream.state_dict(), ours.state_dict()
        assert list(mine) == list(theirs)
        assert all(mine[k].shape == theirs[k].shape for k in theirs)
    assert len(voice_encoder_pair[1].state_dict()) == 16


def test_kaldi_fbank(oracle):
    kaldi = importlib.import_module("torchaudio.compliance.kaldi")
    wav = torch.from_numpy(speechlike(2.0, seed=0))
    ref = kaldi.fbank(wav[None], num_mel_bins=80)
    assert rel_error(kaldi_fbank(wav, num_mel_bins=80), ref) < 1e-5
    # Batched rows equal the per-row features; float64 flows through.
    batch = torch.stack([wav, wav.flip(0)])
    assert rel_error(kaldi_fbank(batch, num_mel_bins=80)[1], kaldi.fbank(batch[1:], num_mel_bins=80)) < 1e-5
    ref64 = kaldi.fbank(wav[None].double(), num_mel_bins=80)
    ours64 = kaldi_fbank(wav.double(), num_mel_bins=80)
    assert ours64.dtype == torch.float64 and rel_error(ours64, ref64) < 1e-12


def test_campplus_embedding(campplus_pair):
    upstream, ours = campplus_pair
    with torch.inference_mode():
        for seconds, seed in ((1.3, 1), (2.7, 2)):
            wav = torch.from_numpy(speechlike(seconds, seed))[None]  # (1, N)
            ref, out = upstream.inference(wav), ours.inference(wav)
            assert out.shape == (1, 192) and ref.abs().max() > 1e-2
            assert rel_error(out, ref) < 1e-4
        batch = torch.from_numpy(np.stack([speechlike(1.5, 3), speechlike(1.5, 4)]))  # (2, N)
        assert rel_error(ours.inference(batch), upstream.inference(batch)) < 1e-4


def test_campplus_detects_mismapped_weights(campplus_pair):
    upstream, _ = campplus_pair
    wav = torch.from_numpy(speechlike(1.0, 5))[None]
    bad = CAMPPlus().eval()
    bad.load_state_dict(swapped(upstream.state_dict(), "xvector.block2.tdnnd3.cam_layer.linear1.weight",
                                "xvector.block2.tdnnd4.cam_layer.linear1.weight"))
    with torch.inference_mode():
        assert rel_error(bad.inference(wav), upstream.inference(wav)) > 1e-3


def test_voice_encoder_front_end(voice_encoder_pair):
    librosa = importlib.import_module("librosa")
    melspec = importlib.import_module("chatterbox.models.voice_encoder.melspec")
    upstream, ours = voice_encoder_pair
    trimmed_lengths = []
    for wav in (speechlike(3.0, 6, silence=0.7), speechlike(2.0, 7)):
        trimmed = librosa.effects.trim(wav, top_db=20)[0]
        ours_trimmed = ours.trim_silence(torch.from_numpy(wav), 20).numpy()
        assert np.array_equal(ours_trimmed, trimmed)
        trimmed_lengths.append((len(wav), len(trimmed)))
        ref = torch.from_numpy(melspec.melspectrogram(trimmed, upstream.hp).T)  # (T, 40)
        out = ours.melspectrogram(torch.from_numpy(trimmed))
        assert out.dtype == torch.float32 and rel_error(out, ref) < 1e-5
    (n0, t0), (n1, t1) = trimmed_lengths
    assert t0 < n0 - SR and t1 == n1  # the silence-framed clip lost >= 1 s, the other nothing


def test_voice_encoder_embeds_from_wavs(voice_encoder_pair):
    upstream, ours = voice_encoder_pair
    wavs = [speechlike(3.0, 8, silence=0.6), speechlike(7.0, 9)]
    ref = upstream.embeds_from_wavs(wavs, sample_rate=SR)  # Chatterbox's call
    out = ours.embeds_from_wavs(wavs, sample_rate=SR)
    assert out.shape == (2, 256) and out.dtype == np.float32
    assert rel_error(torch.from_numpy(out), torch.from_numpy(ref)) < 1e-4
    # Other partial-window settings and the speaker mean; small batches chunk the partials.
    kwargs = dict(as_spk=True, batch_size=3, rate=None, overlap=0.25, min_coverage=0.5)
    ref = upstream.embeds_from_wavs(wavs, sample_rate=SR, **kwargs)
    out = ours.embeds_from_wavs(wavs, sample_rate=SR, **kwargs)
    assert out.shape == (256,) and rel_error(torch.from_numpy(out), torch.from_numpy(ref)) < 1e-4
    # Mis-mapped LSTM weights are caught.
    bad = VoiceEncoder().eval()
    bad.load_state_dict(swapped(upstream.state_dict(), "lstm.weight_ih_l1", "lstm.weight_hh_l1"))
    out = bad.embeds_from_wavs(wavs, sample_rate=SR)
    assert rel_error(torch.from_numpy(out), torch.from_numpy(upstream.embeds_from_wavs(wavs, SR))) > 1e-3
