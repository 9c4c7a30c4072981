"""Windowed-sinc resampling by polyphase convolution (the algorithm of torchaudio's `Resample`).

Upstream S3Gen resamples the 24 kHz reference clip to 16 kHz with torchaudio's transform before the
speaker encoder and the S3 tokenizer; the exact preset needs the same filter to reproduce them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=8)
def _kernel(sr_in: int, sr_out: int, zero_crossings: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """(sr_out, 1, 2 * width + sr_in) float32 filters, one per output phase, and the half width."""
    cutoff = min(sr_in, sr_out) * rolloff  # in units of the reduced rates
    width = math.ceil(zero_crossings * sr_in / cutoff)
    taps = torch.arange(-width, width + sr_in, dtype=torch.float64) / sr_in  # (2w + sr_in,)
    phases = -torch.arange(sr_out, dtype=torch.float64)[:, None] / sr_out  # (sr_out, 1)
    t = ((phases + taps) * cutoff).clamp(-zero_crossings, zero_crossings)  # (sr_out, 2w + sr_in)
    hann = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return (sinc * hann * (cutoff / sr_in)).to(torch.float32)[:, None], width


def sinc_resample(wav: torch.Tensor, sr_in: int, sr_out: int, zero_crossings: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """Resample (..., N) -> (..., ceil(N * sr_out / sr_in)) with a Hann-windowed sinc filter."""
    if sr_in == sr_out:
        return wav
    gcd = math.gcd(sr_in, sr_out)
    sr_in, sr_out = sr_in // gcd, sr_out // gcd
    kernel, width = _kernel(sr_in, sr_out, zero_crossings, rolloff)
    lead, n = wav.shape[:-1], wav.shape[-1]
    x = F.pad(wav.reshape(-1, 1, n), (width, width + sr_in))  # (B, 1, N + 2w + sr_in)
    y = F.conv1d(x, kernel.to(wav.device, wav.dtype), stride=sr_in)  # (B, sr_out, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(sr_out * n / sr_in)]
    return y.reshape(*lead, -1)
