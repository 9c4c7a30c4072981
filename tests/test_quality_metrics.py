"""Every quality metric on synthetic signals with known answers."""

import numpy as np
import pytest

from faster_chatterbox.quality import metrics as M

SR = 24000


def tone(freq=220.0, seconds=2.0, amp=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return amp * np.sin(2 * np.pi * freq * t)


def harmonic_voice(cents=0.0, seconds=3.0, base=150.0):
    """A sawtooth-like voice (14 harmonics) with a gliding F0 and syllable envelope, shifted by `cents`."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = (base + 20 * np.sin(2 * np.pi * 0.7 * t)) * 2 ** (cents / 1200)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wav = sum(np.sin(k * phase) / k for k in range(1, 15))
    return 0.3 * wav * np.clip(2 * np.sin(2 * np.pi * t) ** 2, 0, 1)


def noise_at_snr(ref, snr_db, seed=0):
    noise = np.random.default_rng(seed).standard_normal(ref.size)
    return noise * np.sqrt((ref**2).sum() / (noise**2).sum() / 10 ** (snr_db / 10))


def test_identical_signals_have_zero_distance():
    x = harmonic_voice()
    assert M.mel_l1(x, x, SR) == 0.0
    assert M.mel_cepstral_distortion(x, x, SR) == 0.0
    assert M.si_sdr(x, x) == M.SI_SDR_CAP
    rmse, voicing = M.f0_rmse_cents(x, x, SR)
    assert rmse == 0.0 and voicing == 1.0


def test_distances_grow_with_distortion():
    x = harmonic_voice()
    small, large = x + noise_at_snr(x, 30), x + noise_at_snr(x, 5)
    assert 0 < M.mel_l1(x, small, SR) < M.mel_l1(x, large, SR)
    assert 0 < M.mel_cepstral_distortion(x, small, SR) < M.mel_cepstral_distortion(x, large, SR)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 35.0])
def test_si_sdr_reports_the_injected_snr(snr_db):
    x = harmonic_voice()
    assert abs(M.si_sdr(x, x + noise_at_snr(x, snr_db)) - snr_db) < 0.5
    assert abs(M.si_sdr(x, 0.3 * (x + noise_at_snr(x, snr_db))) - snr_db) < 0.5  # scale-invariant


def test_si_sdr_rejects_bad_input():
    with pytest.raises(ValueError, match="equal lengths"):
        M.si_sdr(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="silent"):
        M.si_sdr(np.zeros(10), np.ones(10))
    with pytest.raises(ValueError, match="NaN"):
        M.mel_l1(np.full(100, np.nan), np.zeros(100), SR)


def test_mcd_uses_dtw_when_lengths_differ():
    x = harmonic_voice()
    stretched = np.concatenate([x[:SR], np.repeat(x[SR : SR + 4800], 1), x[SR:]])  # 0.2 s repeated
    assert M.mel_cepstral_distortion(x, stretched, SR) < 0.5 * M.mel_cepstral_distortion(x, harmonic_voice(100), SR)
    rows, cols = M.dtw_path(np.abs(np.arange(5.0)[:, None] - np.array([0.0, 1, 1, 2, 3, 4])[None]))
    assert rows.tolist() == [0, 1, 1, 2, 3, 4] and cols.tolist() == [0, 1, 2, 3, 4, 5]


def test_yin_tracks_a_tone():
    f0, voiced = M.yin_f0(tone(220.0), SR)
    assert voiced.mean() > 0.95
    cents = np.abs(1200 * np.log2(f0[voiced] / 220.0))
    assert np.median(cents) < 1.0 and cents.max() < 10.0  # the last frames see the zero padding
    f0, voiced = M.yin_f0(np.zeros(SR), SR)
    assert not voiced.any()


@pytest.mark.parametrize("cents", [50.0, 100.0, -200.0])
def test_pitch_shift_moves_f0_rmse_by_the_shift(cents):
    rmse, voicing = M.f0_rmse_cents(harmonic_voice(), harmonic_voice(cents), SR)
    assert abs(rmse - abs(cents)) < 5.0
    assert voicing > 0.95


def test_clicks_counted_on_injected_discontinuities_only():
    assert M.click_count(tone(), SR) == 0
    assert M.click_count(harmonic_voice(), SR) == 0
    assert M.click_count(harmonic_voice(base=85.0), SR) == 0  # low, pulse-like voice
    assert M.click_count(0.1 * np.random.default_rng(0).standard_normal(3 * SR), SR) == 0
    spiked = harmonic_voice()
    spiked[30000] += 0.3
    times = M.click_times(spiked, SR)
    assert times.size == 1 and abs(times[0] - 30000 / SR) < 0.001
    stepped = tone()
    stepped[20000:] += 0.1
    stepped[40000] -= 0.2
    assert M.click_count(stepped, SR) == 2


def test_loudness_duration_and_wer():
    x = tone(1000.0, seconds=3.0, amp=0.5)
    assert abs(M.loudness_lufs(x, SR) - M.loudness_lufs(0.5 * x, SR) - 20 * np.log10(2)) < 0.1
    assert np.isnan(M.loudness_lufs(x[: SR // 10], SR))
    assert M.duration_per_char(np.zeros(SR), SR, "a" * 10) == pytest.approx(0.1)
    assert M.word_error_rate("Hello there, it's me.", "hello there it's me") == 0.0
    assert M.word_error_rate("one two three four", "one too three") == 0.5  # 1 substitution + 1 deletion
    with pytest.raises(ValueError, match="no words"):
        M.word_error_rate("...", "x")


def test_pesq_and_stoi():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    x = harmonic_voice()
    assert M.pesq_score(x, x, SR) > 4.5
    assert M.stoi_score(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    noisy = x + noise_at_snr(x, 0)
    assert M.pesq_score(x, noisy, SR) < 2.0
    assert M.stoi_score(x, noisy, SR) < 0.95
    assert np.isnan(M.stoi_score(x[:4000], x[:4000], SR))  # too short to score


def test_missing_packages_raise_missing_dependency(monkeypatch):
    import sys

    for name in ("pesq", "pystoi"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    x = harmonic_voice(seconds=1.0)
    with pytest.raises(M.MissingDependency, match="quality"):
        M.pesq_score(x, x, SR)
    with pytest.raises(M.MissingDependency, match="quality"):
        M.stoi_score(x, x, SR)
