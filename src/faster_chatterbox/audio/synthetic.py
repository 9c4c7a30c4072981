"""A synthetic, speech-like test voice: no recording is needed to exercise the voice pipeline."""

from __future__ import annotations

import numpy as np


def synthetic_voice(seconds: float = 10.0, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables' (a harmonic source shaped by three formants) with an intonation contour,
    short pauses and a little breath noise. Float32 mono, peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, np.pi)) + 8 * np.sin(2 * np.pi * 5.5 * t)  # Hz
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = rng.uniform([500, 1200, 2400], [800, 1800, 3000])  # Hz
    voiced = np.zeros(n)
    for k in range(1, 40):
        freq = k * f0
        gain = sum(np.exp(-0.5 * ((freq - f) / 120.0) ** 2) for f in formants) + 0.05
        voiced += np.where(freq < sr / 2, gain / k, 0.0) * np.sin(k * phase)
    syllable_rate = 4.0  # per second, with a pause every ~2 s
    envelope = np.clip(np.sin(np.pi * syllable_rate * t) ** 2 * 1.4, 0, 1)
    envelope *= (np.sin(2 * np.pi * t / 2.2) > -0.8)
    wav = voiced * envelope + 0.01 * rng.standard_normal(n)
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)
