"""`optimize_quality` post-processing: high-pass, de-click, edge trimming, loudness, peak limiting.

Default loudness target: -19 LUFS, the AES TD1008 / podcast-platform level for mono speech (it plays
as loud as -16 LUFS stereo, the common streaming-speech target). The limiter works on sample peaks
(not inter-sample true peaks): look-ahead gain reduction, so no sample exceeds the ceiling.
"""

from __future__ import annotations

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import butter, sosfiltfilt

from faster_chatterbox.audio.joins import trim_edges


def highpass(wav: np.ndarray, sr: int, cutoff_hz: float = 60.0) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass: removes DC and rumble below `cutoff_hz`."""
    sos = butter(2, cutoff_hz, btype="highpass", fs=sr, output="sos")  # applied twice (filtfilt): 4th order
    padlen = min(wav.size - 1, 3 * (2 * len(sos) + 1))
    return sosfiltfilt(sos, wav.astype(np.float64), padlen=padlen).astype(np.float32)


def remove_clicks(
    wav: np.ndarray, sr: int, *, strength: float = 10.0, block_ms: float = 20.0, isolation_ms: float = 10.0
) -> np.ndarray:
    """Replace isolated sample spikes by linear interpolation from their neighbours.

    Measure: a sample's distance from the mean of its two neighbours. A spike exceeds `strength`
    times that measure's median in its `block_ms` block (plus a -80 dBFS floor) and twice its largest
    value within `isolation_ms` around (two samples either side excluded), which spares the periodic
    pitch pulses of voiced speech. Spikes are widened by one sample each side before interpolating.
    """
    x = wav.astype(np.float64)
    if x.size < 3:
        return wav.astype(np.float32)
    d2 = np.zeros_like(x)
    d2[1:-1] = np.abs(x[1:-1] - 0.5 * (x[:-2] + x[2:]))  # (N,) second-difference magnitude
    block, reach = max(3, int(sr * block_ms / 1000)), max(4, int(sr * isolation_ms / 1000))
    n_blocks = -(-x.size // block)
    padded = np.pad(d2, (0, n_blocks * block - x.size), mode="edge").reshape(n_blocks, block)
    scale = np.repeat(np.median(padded, axis=1), block)[: x.size]
    spikes = np.zeros(x.size, bool)
    for n in np.flatnonzero(d2 > strength * scale + 1e-4):
        around = np.concatenate([d2[max(0, n - reach) : max(0, n - 2)], d2[n + 3 : n + reach + 1]])
        spikes[n] = d2[n] > 2 * around.max(initial=0.0)
    spikes |= np.roll(spikes, 1) | np.roll(spikes, -1)
    spikes[[0, -1]] = False
    if spikes.any():
        good = np.flatnonzero(~spikes)
        x[spikes] = np.interp(np.flatnonzero(spikes), good, x[good])
    return x.astype(np.float32)


def normalize_loudness(wav: np.ndarray, sr: int, target_lufs: float = -19.0) -> np.ndarray:
    """Gain to `target_lufs` integrated loudness (ITU-R BS.1770 via pyloudnorm); audio shorter than
    one 400 ms gating block, or silent, is returned unchanged."""
    if wav.size < int(0.4 * sr) + 1:
        return wav
    loudness = pyloudnorm.Meter(sr).integrated_loudness(wav.astype(np.float64))
    if not np.isfinite(loudness):
        return wav
    return (wav * 10 ** ((target_lufs - loudness) / 20)).astype(np.float32)


def limit_peaks(wav: np.ndarray, sr: int, ceiling_db: float = -1.0, lookahead_ms: float = 5.0) -> np.ndarray:
    """Look-ahead peak limiter: smooth gain reduction starting `lookahead_ms` before each peak."""
    ceiling = 10 ** (ceiling_db / 20)
    peak = np.abs(wav).astype(np.float64)
    if peak.max(initial=0.0) <= ceiling:
        return wav
    half = max(1, int(sr * lookahead_ms / 1000))
    needed = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))  # (N,) gain each sample needs
    gain = uniform_filter1d(minimum_filter1d(needed, 2 * half + 1), half + 1)  # never above `needed`
    return np.clip(wav * gain, -ceiling, ceiling).astype(np.float32)


def postprocess(
    wav: np.ndarray, sr: int, *, highpass_hz: float | None = 60.0, declick: bool = True,
    trim: bool = True, target_lufs: float | None = -19.0, peak_limit_db: float | None = -1.0,
) -> np.ndarray:
    """The `optimize_quality` chain: high-pass, de-click, trim edges, loudness, peak limit (None/False: skip)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0 or not np.isfinite(wav).all():
        raise ValueError("postprocess needs non-empty audio with finite samples")
    if highpass_hz is not None:
        if not 0 < highpass_hz < sr / 2:
            raise ValueError(f"highpass_hz must be in (0, {sr / 2}), got {highpass_hz}")
        wav = highpass(wav, sr, highpass_hz)
    if declick:
        wav = remove_clicks(wav, sr)
    if trim:
        wav = trim_edges(wav, sr)
    if target_lufs is not None:
        wav = normalize_loudness(wav, sr, target_lufs)
    if peak_limit_db is not None:
        wav = limit_peaks(wav, sr, peak_limit_db)
    return wav
