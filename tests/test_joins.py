"""Chunk joins: DC removal, edge trimming, crossfades and pauses, and the join measurement catching clicks."""

import numpy as np
import pytest

from faster_chatterbox.audio.joins import join_chunks, measure_joins, remove_dc, trim_edges
from faster_chatterbox.audio.synthetic import synthetic_voice

SR = 24000


def _sine(seconds=1.0, phase=0.0, freq=220.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _butt_joined(pieces):
    """Plain concatenation and the span of each seam (the two samples either side)."""
    ends = np.cumsum([p.size for p in pieces[:-1]])
    return np.concatenate(pieces), [(int(e) - 1, int(e) + 1) for e in ends]


def test_remove_dc():
    assert abs(float(remove_dc(_sine() + 0.2).mean())) < 1e-6


def test_trim_edges_cuts_silence_and_hiss_keeps_speech():
    rng = np.random.default_rng(0)
    speech = _sine(0.5)
    hiss = lambda s: (0.002 * rng.standard_normal(int(s * SR))).astype(np.float32)  # ~-54 dBFS
    trimmed = trim_edges(np.concatenate([hiss(0.4), speech, hiss(0.6)]), SR, margin_ms=40)
    assert abs(trimmed.size - (speech.size + 2 * int(0.04 * SR))) <= int(0.02 * SR)
    assert abs(trimmed[0]) < 1e-3 and abs(trimmed[-1]) < 1e-3  # faded edges
    quiet = np.zeros(SR, np.float32)
    assert trim_edges(quiet, SR).size == SR  # nothing to find: unchanged


@pytest.mark.parametrize("second", [_sine(phase=2.0), _sine() + 0.15], ids=["phase-jump", "dc-step"])
def test_measure_joins_flags_butt_joins_and_passes_crossfades(second):
    first = _sine()
    wav, spans = _butt_joined([first, second])
    report = measure_joins(wav, SR, spans)
    assert report.clicks == 1 and not report.ok and report.step_ratio[0] > 4
    for pause in (0.0, 0.3):
        wav, spans = join_chunks([remove_dc(first), remove_dc(second)], [pause], SR)
        report = measure_joins(wav, SR, spans)
        assert report.ok, report


def test_join_chunks_lengths_and_spans():
    a, b, c = (synthetic_voice(1.0, SR, seed=s) for s in range(3))
    wav, spans = join_chunks([a, b, c], [0.0, 0.5], SR, crossfade_ms=20)
    n = int(0.02 * SR)
    assert wav.dtype == np.float32 and wav.size == a.size + b.size + c.size - n + int(0.5 * SR)
    assert spans == [(a.size - n, a.size), (a.size + b.size - 2 * n, a.size + b.size - 2 * n + 2 * n + int(0.5 * SR))]
    silence = wav[spans[1][0] + n : spans[1][1] - n]
    assert silence.size == int(0.5 * SR) and not silence.any()
    with pytest.raises(ValueError, match="pauses"):
        join_chunks([a, b], [], SR)
    with pytest.raises(ValueError, match=">= 0"):
        join_chunks([a, b], [-1.0], SR)


def test_equal_power_crossfade_keeps_level_of_uncorrelated_noise():
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(SR).astype(np.float32) * 0.1 for _ in range(2))
    wav, [(start, end)] = join_chunks([a, b], [0.0], SR, crossfade_ms=50)
    assert abs(float(np.sqrt(np.mean(wav[start:end] ** 2))) / 0.1 - 1) < 0.15


def test_voice_chunks_joined_have_no_clicks():
    pieces = [trim_edges(remove_dc(synthetic_voice(2.0, SR, seed=s) + 0.05 * s), SR) for s in range(4)]
    wav, spans = join_chunks(pieces, [0.0, 0.3, 0.0], SR)
    assert measure_joins(wav, SR, spans).ok
