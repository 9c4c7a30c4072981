"""Parity of the HiFT vocoder and S3Gen's 24 kHz mel front-end against upstream chatterbox."""

import math

import pytest
import torch

from faster_chatterbox.audio.mel import s3gen_mel_spectrogram
from faster_chatterbox.models.hift import F0Smoothing, HiFTConfig, HiFTGenerator, f0_jitter, smooth_f0
from helpers import rel_error

N_FRAMES = 50  # 1 s of audio

pytestmark = pytest.mark.usefixtures("single_thread")  # a shared CPU makes OpenMP threads wait on each other


def _upstream_hift():
    """mel2wav exactly as upstream's S3Token2Wav builds it."""
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.hifigan import HiFTGenerator as UpstreamHiFT

    return UpstreamHiFT(
        sampling_rate=24000,
        upsample_rates=[8, 5, 3],
        upsample_kernel_sizes=[16, 11, 7],
        source_resblock_kernel_sizes=[7, 7, 11],
        source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        f0_predictor=ConvRNNF0Predictor(),
    ).eval()


def _test_mel(batch: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 80, frames, generator=g) - 4.0


@pytest.fixture(scope="module")
def models(oracle):
    torch.manual_seed(0)
    up = _upstream_hift()
    with torch.no_grad():
        for name, p in up.named_parameters():
            if name.endswith("original0"):  # weight-norm magnitudes
                p.copy_(0.5 + 0.05 * torch.randn_like(p))
            elif name.endswith("alpha"):  # Snake frequencies stay away from 0
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
        # Give the F0 head a speech-like range, 0-500 Hz, with some frames under the 10 Hz voicing threshold.
        head = up.f0_predictor.classifier
        head.bias.zero_()
        raw = head(up.f0_predictor.condnet(_test_mel(1, N_FRAMES, 1)).transpose(1, 2))
        head.weight.mul_(150.0 / raw.std())
        head.bias.fill_(100.0)
    ours = HiFTGenerator(HiFTConfig()).eval()
    ours.load_state_dict(up.state_dict(), strict=True)
    return up, ours


def _run_upstream(up, mel: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    wav, source = up.inference(speech_feat=mel, cache_source=torch.zeros(1, 1, 0))
    return wav, source, torch.get_rng_state()


def _run_ours(ours, mel: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    wav, source = ours.inference(mel)
    return wav, source, torch.get_rng_state()


def _assert_wav_parity(wav: torch.Tensor, ref: torch.Tensor) -> None:
    assert wav.shape == ref.shape
    assert (wav - ref).abs().max() <= 1e-4
    assert rel_error(wav, ref) < 1e-4


def test_state_dict_keys(models):
    up, ours = models
    ref = up.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(ref)
    assert all(mine[k].shape == ref[k].shape for k in ref)
    assert any(k.endswith("parametrizations.weight.original0") for k in ref)


def test_stft_window_matches_upstream(models):
    up, ours = models
    assert torch.equal(ours._window(torch.device("cpu")), up.stft_window)


def test_f0_predictor(models):
    up, ours = models
    mel = _test_mel(2, N_FRAMES, 1)
    with torch.inference_mode():
        ref, f0 = up.f0_predictor(mel), ours.f0_predictor(mel)
    assert f0.shape == (2, N_FRAMES)
    assert ref.max() > 200 and (ref < 10).any(), "test F0 should span voiced and unvoiced frames"
    assert rel_error(f0, ref) < 1e-5


def test_inference_waveform_same_seed(models):
    up, ours = models
    mel = _test_mel(1, N_FRAMES, 1)
    ref_wav, ref_src, ref_rng = _run_upstream(up, mel, seed=1234)
    wav, src, rng = _run_ours(ours, mel, seed=1234)
    assert wav.shape == (1, N_FRAMES * 480) and src.shape == (1, 1, N_FRAMES * 480)
    assert ref_wav.abs().max() > 0.01, "degenerate test waveform"
    assert rel_error(src, ref_src) < 1e-5
    _assert_wav_parity(wav, ref_wav)
    assert torch.equal(rng, ref_rng), "the global RNG must be consumed exactly like upstream"
    # The source does depend on the seed, so the comparison above exercises the RNG.
    torch.manual_seed(4321)
    with torch.inference_mode():
        other = ours.m_source(ours.f0_predictor(mel).repeat_interleave(480, dim=-1)[:, None])
    assert rel_error(other, ref_src) > 1e-3


def test_folded_weight_norm_and_batch(models):
    up, ours = models
    folded = HiFTGenerator(HiFTConfig()).eval()
    folded.load_state_dict(ours.state_dict())
    folded.fold_weight_norm()
    assert not any("parametrizations" in k for k in folded.state_dict())
    mel = _test_mel(2, 20, 2)
    ref_wav, ref_src, _ = _run_upstream(up, mel, seed=7)
    wav, src, _ = _run_ours(folded, mel, seed=7)
    assert rel_error(src, ref_src) < 1e-5
    _assert_wav_parity(wav, ref_wav)


def test_mismapped_weight_breaks_parity(models):
    up, _ = models
    sd = dict(up.state_dict())
    a, b = "resblocks.4.convs1.0.parametrizations.weight.original1", "resblocks.4.convs1.1.parametrizations.weight.original1"
    sd[a], sd[b] = sd[b], sd[a]
    broken = HiFTGenerator(HiFTConfig()).eval()
    broken.load_state_dict(sd)
    mel = _test_mel(1, 20, 3)
    ref_wav, _, _ = _run_upstream(up, mel, seed=5)
    wav, _, _ = _run_ours(broken, mel, seed=5)
    with pytest.raises(AssertionError):
        _assert_wav_parity(wav, ref_wav)


@pytest.mark.parametrize("kind", ["noise", "sine"])
def test_s3gen_mel_spectrogram(oracle, kind):
    from chatterbox.models.s3gen.utils.mel import mel_spectrogram

    n = 24000 + 333
    g = torch.Generator().manual_seed(0)
    if kind == "noise":
        wav = 0.3 * torch.randn(2, n, generator=g)
    else:
        t = torch.arange(n) / 24000
        wav = 0.5 * torch.sin(2 * torch.pi * 220.0 * t)[None] + 0.01 * torch.randn(1, n, generator=g)
    ref = mel_spectrogram(wav)
    ours = s3gen_mel_spectrogram(wav)
    assert ours.shape == (wav.shape[0], 80, n // 480)
    assert rel_error(ours, ref) < 1e-5
    assert torch.allclose(s3gen_mel_spectrogram(wav[0]), ours[:1])


# ---- beyond upstream: fast form, batched rows, per-row generators, F0 smoothing ----------------------------------


def _fast(ours, dtype):
    model = HiFTGenerator(HiFTConfig()).eval()
    model.load_state_dict(ours.state_dict())
    return model.make_fast(dtype)


def _snr_db(wav: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().pow(2).sum() / (wav.double() - ref.double()).pow(2).sum()))


def test_fast_layout_float32_keeps_parity(models):
    up, ours = models
    fast = _fast(ours, torch.float32)
    assert fast.conv_pre.weight.dim() == 4 and fast.resblocks[0].convs1[0].weight.is_contiguous(
        memory_format=torch.channels_last)
    mel = _test_mel(1, N_FRAMES, 1)
    ref_wav, ref_src, ref_rng = _run_upstream(up, mel, seed=1234)
    wav, src, rng = _run_ours(fast, mel, seed=1234)
    assert rel_error(src, ref_src) < 1e-5
    _assert_wav_parity(wav, ref_wav)
    assert torch.equal(rng, ref_rng)


def test_bfloat16_error_against_float32(models):
    _, ours = models
    fast = _fast(ours, torch.bfloat16)
    assert fast.resblocks[0].convs1[0].weight.dtype == torch.bfloat16
    assert fast.f0_predictor.classifier.weight.dtype == torch.float32  # F0 and the source stay float32
    mel = _test_mel(1, N_FRAMES, 1)
    for mel_in in (mel, mel.bfloat16()):  # whatever dtype the flow hands over
        ref_wav, ref_src, ref_rng = _run_ours(ours, mel_in.float(), seed=3)
        wav, src, rng = _run_ours(fast, mel_in, seed=3)
        assert wav.dtype == torch.float32 and wav.shape == ref_wav.shape
        assert torch.equal(rng, ref_rng) and torch.equal(src, ref_src)
        # Measured 44 dB SNR and 1.2% of the peak on these weights (benchmarks/hift_speed.md).
        assert _snr_db(wav, ref_wav) > 38
        assert (wav - ref_wav).abs().max() < 0.03 * ref_wav.abs().max()


def _padded_batch(lengths: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    rows = [_test_mel(1, n, 10 + i) for i, n in enumerate(lengths)]
    batch = torch.full((len(rows), 80, max(lengths)), 3.0)  # loud padding: any leak would show
    for i, row in enumerate(rows):
        batch[i, :, : row.shape[-1]] = row[0]
    return batch, rows


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_rows_equal_unbatched(models, dtype):
    _, ours = models
    model = ours if dtype == torch.float32 else _fast(ours, dtype)
    lengths = [32, 21, 9]
    batch, rows = _padded_batch(lengths)
    wav, src = model.inference(batch, torch.tensor(lengths), generators=_generators([1, 2, 3]))
    assert wav.shape == (3, 32 * 480)
    tail = 3  # the iSTFT's last samples of a shorter row overlap one frame more than the row alone has
    for i, (n, row) in enumerate(zip(lengths, rows)):
        ref_wav, ref_src = model.inference(row, generators=_generators([i + 1]))
        end = n * 480
        # F0's float rounding differs with the batch; the source integrates it into phase.
        assert (src[i, :, :end] - ref_src).abs().max() < 1e-2 * ref_src.abs().max()
        assert torch.count_nonzero(src[i, :, end:]) == 0 and torch.count_nonzero(wav[i, end:]) == 0
        body, ref_body = wav[i, : end - tail], ref_wav[0, :-tail]
        peak = ref_body.abs().max()
        if dtype == torch.float32:
            assert (body - ref_body).abs().max() < 1e-3 * peak  # float rounding (F0 -> integrated phase)
        else:
            assert _snr_db(body, ref_body) > 35  # bfloat16 rounding, as against float32
        assert (wav[i, end - tail:end] - ref_wav[0, -tail:]).abs().max() < 0.2 * peak


def test_batch_arguments_are_checked(models):
    _, ours = models
    mel = _test_mel(2, 10, 0)
    with pytest.raises(ValueError, match="mel_lens"):
        ours.inference(mel, torch.tensor([10, 0]))
    with pytest.raises(ValueError, match="mel_lens"):
        ours.inference(mel, torch.tensor([10.0, 5.0]))
    with pytest.raises(ValueError, match="generator"):
        ours.inference(mel, generators=_generators([1]))
    with pytest.raises(ValueError, match="mel must be"):
        ours.inference(mel[0])
    with pytest.raises(ValueError, match="make_fast"):
        HiFTGenerator(HiFTConfig(base_channels=32, f0_channels=32)).make_fast(torch.int8)


def _f0_track(frames: int, noise: float, seed: int = 0) -> torch.Tensor:
    """A speech-like F0 contour (B=1, T) in Hz: a slow intonation, two unvoiced gaps, optional frame noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames) / 50
    f0 = 140 + 30 * torch.sin(2 * math.pi * 0.4 * t) + 6 * torch.sin(2 * math.pi * 3.0 * t)
    f0 = f0 * (1 + noise * torch.randn(frames, generator=g))
    f0[40:55] = 0
    f0[120:128] = 0
    return f0[None]


def test_f0_smoothing_reduces_jitter_and_keeps_voicing():
    smoothing = F0Smoothing()  # median over 5 frames, Gaussian sigma 1 frame
    clean, noisy = _f0_track(200, noise=0.0), _f0_track(200, noise=0.05)
    voiced = clean > 10
    smoothed = smooth_f0(noisy, smoothing)
    assert torch.equal(smoothed > 10, voiced) and torch.equal(smoothed == 0, ~voiced)  # voicing unchanged
    assert f0_jitter(smoothed) < 0.4 * f0_jitter(noisy)  # measured 0.051 -> 0.012
    assert (smoothed - clean)[voiced].abs().mean() < 0.6 * (noisy - clean)[voiced].abs().mean()
    # A smooth contour (with a 3 Hz vibrato) barely moves: measured 0.34% on average, 3.5% at the worst edge.
    change = ((smooth_f0(clean, smoothing) - clean).abs() / clean.clamp_min(1))[voiced]
    assert change.mean() < 0.005 and change.max() < 0.05
    assert torch.equal(smooth_f0(noisy, F0Smoothing(median_frames=1, gaussian_sigma=0)), noisy)


def test_f0_smoothing_in_inference(models):
    _, ours = models
    mel = _test_mel(1, N_FRAMES, 1)
    plain, _, _ = _run_ours(ours, mel, seed=9)
    torch.manual_seed(9)
    identity, _ = ours.inference(mel, f0_smoothing=F0Smoothing(median_frames=1, gaussian_sigma=0))
    torch.manual_seed(9)
    smoothed, _ = ours.inference(mel, f0_smoothing=F0Smoothing())
    assert torch.equal(identity, plain)
    assert rel_error(smoothed, plain) > 1e-3
    with pytest.raises(ValueError, match="median_frames"):
        F0Smoothing(median_frames=4)
    with pytest.raises(ValueError, match="gaussian_sigma"):
        F0Smoothing(gaussian_sigma=-1.0)
    with pytest.raises(ValueError, match="voiced"):
        f0_jitter(torch.zeros(1, 10))
