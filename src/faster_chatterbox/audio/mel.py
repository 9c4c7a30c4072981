"""Mel filterbanks, computed the way librosa computes them (Slaney mel scale, Slaney area norm).

Chatterbox's three mel front-ends (S3Gen's 24 kHz mel, the S3 tokenizer's 16 kHz log-mel and the
voice encoder's mel) were all trained on librosa's filters; this reproduces them without librosa.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_F_SP = 200.0 / 3  # Slaney scale: linear below 1 kHz, 3 mels per 200 Hz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray, htk: bool = False) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    return np.where(log_region, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP, mel)


def mel_to_hz(mel: np.ndarray, htk: bool = False) -> np.ndarray:
    mel = np.asanyarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    hz = _F_SP * mel
    log_region = mel >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), hz)


@lru_cache(maxsize=16)
def _mel_filterbank_np(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool) -> np.ndarray:
    fmax = sr / 2.0 if fmax is None else float(fmax)
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # (n_fft // 2 + 1,)
    band_hz = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)  # (n_mels + 2,)
    widths = np.diff(band_hz)  # (n_mels + 1,)
    ramps = band_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freq)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa rounds the triangles to float32 before applying the norm; doing the same keeps the
    # filters bit-identical to the ones the models were trained with.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)  # (n_mels, n_freq)
    weights *= (2.0 / (band_hz[2:] - band_hz[:-2]))[:, None]  # Slaney norm: equal area per band
    return weights


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False) -> torch.Tensor:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk) as float32.

    Returns a new (n_mels, n_fft // 2 + 1) tensor.
    """
    return torch.from_numpy(_mel_filterbank_np(sr, n_fft, n_mels, float(fmin), fmax, htk).copy())


S3GEN_SR = 24000
_S3GEN_N_FFT, _S3GEN_HOP, _S3GEN_N_MELS, _S3GEN_FMAX = 1920, 480, 80, 8000.0


@lru_cache(maxsize=8)
def _s3gen_mel_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(filterbank (80, 961), Hann window (1920,)) for S3Gen's mel, cached per device and dtype."""
    basis = mel_filterbank(S3GEN_SR, _S3GEN_N_FFT, _S3GEN_N_MELS, 0.0, _S3GEN_FMAX)
    window = torch.hann_window(_S3GEN_N_FFT)  # float32 on the CPU, then moved, like the trained front-end
    return basis.to(device, dtype), window.to(device, dtype)


def s3gen_mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """S3Gen's log-mel of 24 kHz audio: wav (B, N) or (N,) -> (B, 80, N // 480), 50 frames per second.

    STFT with n_fft = window = 1920, hop 480, no centering but a reflect pre-pad of (n_fft - hop) / 2
    on each side; magnitude sqrt(re^2 + im^2 + 1e-9); Slaney mel 0-8 kHz; natural log floored at 1e-5.
    """
    if wav.dim() == 1:
        wav = wav[None]
    basis, window = _s3gen_mel_constants(wav.device, wav.dtype)
    pad = (_S3GEN_N_FFT - _S3GEN_HOP) // 2
    wav = F.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]  # (B, N + 1440)
    spec = torch.stft(wav, _S3GEN_N_FFT, _S3GEN_HOP, _S3GEN_N_FFT, window=window, center=False, return_complex=True)
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)  # (B, 961, N // 480)
    return torch.log(torch.clamp(basis @ magnitude, min=1e-5))
