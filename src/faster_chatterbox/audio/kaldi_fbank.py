"""Kaldi-style log-mel filterbank features (compute-fbank-feats), as CAMPPlus was trained on.

Reproduces `torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=...)` with its other options at
their defaults: no dither, DC offset removal, pre-emphasis, Povey window, FFT size rounded up to a
power of two, power spectrum, Kaldi's HTK-style mel triangles, log floored at float32 epsilon, and
"snip edges" framing (only frames that fit entirely inside the signal).
"""

from __future__ import annotations

import math

import torch

_LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi floors every filterbank energy at FLT_EPSILON


def _mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: float, low_freq: float,
                    high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters, (num_bins, n_fft // 2 + 1) float32; the Nyquist column is zero.

    `high_freq <= 0` is an offset from Nyquist, as in Kaldi. Computed in float32 like torchaudio.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    assert 0.0 <= low_freq < high_freq <= nyquist, (low_freq, high_freq, nyquist)
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)

    band = torch.arange(num_bins, dtype=torch.float32)[:, None]  # (num_bins, 1)
    left = mel_low + band * delta
    center = mel_low + (band + 1.0) * delta
    right = mel_low + (band + 2.0) * delta
    fft_hz = (sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32)  # bins below Nyquist
    fft_mel = 1127.0 * (1.0 + fft_hz[None, :] / 700.0).log()  # (1, n_fft // 2)

    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    banks = torch.minimum(rising, falling).clamp_min(0.0)  # (num_bins, n_fft // 2)
    return torch.nn.functional.pad(banks, (0, 1))  # (num_bins, n_fft // 2 + 1)


def kaldi_fbank(
    wave: torch.Tensor,
    num_mel_bins: int = 23,
    sample_rate: float = 16000.0,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis: float = 0.97,
) -> torch.Tensor:
    """Log-mel filterbank of `wave` (..., N) -> (..., T, num_mel_bins), T = 1 + (N - frame_len) // shift.

    Computed in the dtype of `wave` (use float32 or float64).
    """
    frame_len = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    assert 2 <= frame_len <= wave.shape[-1], f"need at least {frame_len} samples, got {wave.shape[-1]}"
    n_fft = 1 << (frame_len - 1).bit_length()  # next power of two

    frames = wave.unfold(-1, frame_len, shift)  # (..., T, frame_len)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # first sample is its own predecessor
    frames = frames - preemphasis * previous
    povey = torch.hann_window(frame_len, periodic=False, dtype=wave.dtype, device=wave.device).pow(0.85)
    frames = frames * povey  # Povey window: Hann ** 0.85, zero at both ends

    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2.0)  # (..., T, n_fft // 2 + 1)
    banks = kaldi_mel_banks(num_mel_bins, n_fft, sample_rate, low_freq, high_freq).to(wave.device, wave.dtype)
    mel = power @ banks.T  # (..., T, num_mel_bins)
    return mel.clamp_min(_LOG_FLOOR).log()
