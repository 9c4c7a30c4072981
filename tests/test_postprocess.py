"""optimize_quality post-processing, stage by stage on synthetic signals."""

import numpy as np
import pyloudnorm
import pytest

from faster_chatterbox.audio.postprocess import highpass, limit_peaks, normalize_loudness, postprocess, remove_clicks
from faster_chatterbox.audio.synthetic import synthetic_voice

SR = 24000


def _tone(freq, amp, seconds=2.0):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _level(wav, freq):
    """Amplitude of the `freq` component (projection onto a sinusoid, middle second only)."""
    t = np.arange(wav.size) / SR
    mid = slice(wav.size // 4, 3 * wav.size // 4)
    return 2 * abs(np.mean(wav[mid] * np.exp(-2j * np.pi * freq * t[mid])))


def test_highpass_removes_rumble_and_dc_keeps_speech_band():
    wav = _tone(20, 0.3) + _tone(440, 0.3) + 0.2
    out = highpass(wav, SR, 60.0)
    assert _level(out, 20) < 0.3 * 0.02 and abs(out[SR // 2 : -SR // 2].mean()) < 1e-3
    assert abs(_level(out, 440) / 0.3 - 1) < 0.01


def test_remove_clicks_restores_the_signal_and_leaves_clean_audio_alone():
    clean = _tone(300, 0.4)
    clicked = clean.copy()
    clicked[[5000, 12345, 30001]] += [0.6, -0.5, 0.7]
    out = remove_clicks(clicked, SR)
    assert np.abs(out - clean).max() < 0.02  # spikes of 0.5-0.7 down to linear-interpolation error
    buzz = sum(_tone(120 * k, 0.4 / k) for k in range(1, 40))  # voiced-like pulse train: sharp but periodic
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.05
    for signal in (buzz, noise, buzz + noise):
        assert np.array_equal(remove_clicks(signal, SR), signal)


def test_loudness_hits_target():
    voice = synthetic_voice(4.0, SR) * 0.1
    for target in (-23.0, -19.0, -16.0):
        out = normalize_loudness(voice, SR, target)
        assert abs(pyloudnorm.Meter(SR).integrated_loudness(out.astype(np.float64)) - target) < 0.5
    short = voice[: SR // 4]
    assert normalize_loudness(short, SR) is short  # under one gating block: unchanged


def test_limiter_caps_peaks_and_leaves_quiet_audio():
    wav = _tone(200, 0.3)
    wav[SR // 2 : SR // 2 + 200] *= 3.0  # a 0.9 burst
    out = limit_peaks(wav, SR, ceiling_db=-3.0)
    assert np.abs(out).max() <= 10 ** (-3 / 20) + 1e-6
    assert np.array_equal(out[:SR // 4], wav[:SR // 4])  # far from the burst: untouched
    assert np.array_equal(limit_peaks(_tone(200, 0.1), SR), _tone(200, 0.1))


def test_postprocess_chain():
    rng = np.random.default_rng(0)
    voice = synthetic_voice(3.0, SR) * 0.2 + _tone(25, 0.05, 3.0) + 0.03
    wav = np.concatenate([0.001 * rng.standard_normal(SR // 2).astype(np.float32), voice, np.zeros(SR, np.float32)])
    wav[SR] += 0.8
    out = postprocess(wav, SR, target_lufs=-19.0, peak_limit_db=-1.0)
    assert out.size < wav.size - SR // 2  # edges trimmed
    assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
    assert abs(pyloudnorm.Meter(SR).integrated_loudness(out.astype(np.float64)) + 19.0) < 1.0
    assert np.array_equal(postprocess(wav, SR, highpass_hz=None, declick=False, trim=False, target_lufs=None,
                                      peak_limit_db=None), wav)
    with pytest.raises(ValueError, match="finite"):
        postprocess(np.array([0.0, np.nan], np.float32), SR)
    with pytest.raises(ValueError, match="highpass_hz"):
        postprocess(wav, SR, highpass_hz=20000)
