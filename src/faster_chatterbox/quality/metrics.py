"""Signal metrics for comparing two syntheses, each validated on synthetic signals in tests.

Distances between two renderings of the same speech tokens (deterministic A/B):
  mel_l1             mean |log-mel A - log-mel B| (S3Gen's 80-bin natural-log mel, 50 frames/s)
  mel_cepstral_distortion  MCD in dB, frame by frame when lengths match, along a DTW path when not
  si_sdr             scale-invariant signal-to-distortion ratio in dB (capped at SI_SDR_CAP)
  f0_rmse_cents, voicing_agreement   from a compact YIN pitch tracker (yin_f0)
  pesq_score, stoi_score             through the optional `pesq` / `pystoi` packages
Properties of one output (statistical A/B): loudness_lufs (pyloudnorm), click_count,
duration_per_char; word_error_rate for transcripts.

Every function takes mono float audio in [-1, 1] with its sample rate; a package that is not installed
raises MissingDependency (an ImportError) naming the extra that provides it.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import torch

from ..audio.io import resample
from ..audio.mel import S3GEN_SR, s3gen_mel_spectrogram

SI_SDR_CAP = 100.0  # dB: identical signals score this instead of +inf
MCD_ORDER = 24  # cepstral coefficients 1..24 (c0, the frame energy, is left out as is customary)
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)  # dB per unit of natural-log cepstral distance


class MissingDependency(ImportError):
    """An optional metric's package is not installed (or its model cannot be loaded offline)."""


def _mono(wav, name: str = "audio") -> np.ndarray:
    wav = np.asarray(wav.detach().cpu() if torch.is_tensor(wav) else wav, dtype=np.float64)
    wav = np.squeeze(wav)
    if wav.ndim != 1:
        raise ValueError(f"{name} must be mono (one channel), got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return wav


def _at(wav, sr: int, target_sr: int, name: str = "audio") -> np.ndarray:
    return resample(_mono(wav, name), sr, target_sr)


# ---- spectral distances ------------------------------------------------------------------
def log_mel(wav, sr: int) -> np.ndarray:
    """S3Gen's log-mel of any mono clip: (T, 80), 50 frames per second."""
    wav24 = torch.from_numpy(_at(wav, sr, S3GEN_SR).astype(np.float32))
    return s3gen_mel_spectrogram(wav24)[0].T.double().numpy()


def mel_l1(ref, deg, sr: int) -> float:
    """Mean absolute log-mel difference over the first min(T_ref, T_deg) frames (natural-log units)."""
    a, b = log_mel(ref, sr), log_mel(deg, sr)
    n = min(len(a), len(b))
    return float(np.abs(a[:n] - b[:n]).mean())


def mel_cepstra(wav, sr: int, order: int = MCD_ORDER) -> np.ndarray:
    """Mel cepstra (T, order), coefficients 1..order of the cosine series of the natural-log mel amplitude:
    ln S_k = c_0 + 2 sum_m c_m cos(pi m (k + 1/2) / N), i.e. c_m = (1 / N) sum_k ln S_k cos(pi m (k + 1/2) / N)
    over the N = 80 mel bins -- the scale of the mel-cepstra (SPTK's) that the MCD formula was defined on."""
    logmel = log_mel(wav, sr)  # (T, 80)
    n = logmel.shape[1]
    k = np.arange(n)
    basis = np.cos(np.pi / n * (k[None, :] + 0.5) * k[:, None]) / n  # (80 coefficients, 80 bins)
    return logmel @ basis[1 : order + 1].T


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic alignment of a (N, M) cost matrix with steps (1,0), (0,1), (1,1).

    Each row is solved in closed form: D[i, j] = S[j] + min_{k<=j} (C[k] - S[k - 1]) where
    C[k] = cost[i, k] + min(D[i-1, k], D[i-1, k-1]) and S is the prefix sum of cost[i] (horizontal runs).
    Returns the path's row and column indices, from (0, 0) to (N-1, M-1).
    """
    n, m = cost.shape
    acc = np.full((n, m), np.inf)
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        up = acc[i - 1]
        diag = np.concatenate(([np.inf], acc[i - 1, :-1]))
        entry = cost[i] + np.minimum(up, diag)  # (M,) arriving from row i-1
        prefix = np.cumsum(cost[i])
        acc[i] = prefix + np.minimum.accumulate(entry - prefix)
    i, j, rows, cols = n - 1, m - 1, [n - 1], [m - 1]
    while i > 0 or j > 0:
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((s for s in steps if s[0] >= 0 and s[1] >= 0), key=lambda s: acc[s])
        rows.append(i)
        cols.append(j)
    return np.array(rows[::-1]), np.array(cols[::-1])


def mel_cepstral_distortion(ref, deg, sr: int) -> float:
    """MCD in dB: mean over aligned frames of (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2), d = 1..24.

    Alignment: frame t with frame t when both clips have the same number of frames (the deterministic
    case: same tokens, 2 frames per token); otherwise along the DTW path of the Euclidean cepstral
    distance (dtw_path). All frames count, silent ones included.
    """
    a, b = mel_cepstra(ref, sr), mel_cepstra(deg, sr)
    if len(a) == len(b):
        dist = np.linalg.norm(a - b, axis=1)
    else:
        cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # (Ta, Tb)
        rows, cols = dtw_path(cost)
        dist = cost[rows, cols]
    return float(_MCD_SCALE * dist.mean())


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR in dB of `est` against `ref` (same length, same rate; means removed).

    10 log10(|a s|^2 / |a s - e|^2) with a = <e, s> / |s|^2; capped at SI_SDR_CAP for identical signals.
    """
    s, e = _mono(ref, "reference"), _mono(est, "estimate")
    if s.shape != e.shape:
        raise ValueError(f"SI-SDR needs equal lengths, got {s.size} and {e.size} samples")
    s, e = s - s.mean(), e - e.mean()
    energy = float(s @ s)
    if energy == 0.0:
        raise ValueError("SI-SDR is undefined for a silent reference")
    target = (e @ s) / energy * s
    noise = float(((e - target) ** 2).sum())
    if noise == 0.0:
        return SI_SDR_CAP
    return float(min(SI_SDR_CAP, 10.0 * np.log10(float(target @ target) / noise)))


# ---- pitch -------------------------------------------------------------------------------
def yin_f0(wav, sr: int, fmin: float = 50.0, fmax: float = 600.0, hop_s: float = 0.01,
           threshold: float = 0.15, silence_db: float = -40.0) -> tuple[np.ndarray, np.ndarray]:
    """F0 track by YIN (de Cheveigne & Kawahara 2002): (f0 Hz (F,), voiced (F,) bool), 100 frames/s.

    Per frame of 2 / fmin seconds: the difference function d(tau) from FFT cross-correlations, its
    cumulative-mean normalisation d'(tau), the first local minimum of d' below `threshold` in
    [sr / fmax, sr / fmin], refined by parabolic interpolation. Frames quieter than `silence_db` below the
    loudest frame, or without such a minimum, are unvoiced (f0 = 0). Implemented here rather than taken
    from librosa.pyin: it keeps the base install light, is deterministic and fast (pyin's Viterbi decoding
    costs about a second per second of audio).
    """
    x = _mono(wav)
    tau_min, tau_max = int(sr / fmax), int(math.ceil(sr / fmin))
    win, hop = tau_max, max(1, int(round(hop_s * sr)))
    n_frames = math.ceil(len(x) / hop)  # frame f covers [f hop - W / 2, f hop + W / 2 + tau_max)
    x = np.pad(x, (win // 2, n_frames * hop + win + tau_max - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win + tau_max)[::hop][:n_frames]  # (F, W + tau_max)
    n_fft = 1 << int(math.ceil(math.log2(2 * (win + tau_max))))
    spec_all, spec_head = np.fft.rfft(frames, n_fft), np.fft.rfft(frames[:, :win], n_fft)
    cross = np.fft.irfft(spec_all * np.conj(spec_head), n_fft)[:, : tau_max + 1]  # (F, tau_max + 1) sum x_j x_{j+tau}
    sq = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    tau = np.arange(tau_max + 1)
    energy_shifted = sq[:, tau + win] - sq[:, tau]  # (F, tau_max + 1) sum over [tau, tau + W)
    diff = np.maximum(energy_shifted[:, :1] + energy_shifted - 2.0 * cross, 0.0)
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * tau[1:] / np.where(running > 0, running, 1.0)
    cmnd[:, 1:][running <= 0] = 1.0

    inner = cmnd[:, tau_min : tau_max]  # candidates tau_min .. tau_max - 1 (both neighbours exist)
    left, right = cmnd[:, tau_min - 1 : tau_max - 1], cmnd[:, tau_min + 1 : tau_max + 1]
    candidate = (inner < threshold) & (inner <= left) & (inner < right)
    found = candidate.any(axis=1)
    best = tau_min + candidate.argmax(axis=1)  # (F,)
    rows = np.arange(len(frames))
    y0, y1, y2 = cmnd[rows, best - 1], cmnd[rows, best], cmnd[rows, best + 1]
    curvature = y0 - 2 * y1 + y2
    shift = np.where(curvature > 0, 0.5 * (y0 - y2) / np.where(curvature > 0, curvature, 1.0), 0.0)
    f0 = sr / (best + np.clip(shift, -1, 1))

    rms = np.sqrt(energy_shifted[:, 0] / win)
    loud = rms > rms.max() * 10 ** (silence_db / 20) if rms.max() > 0 else np.zeros(len(rms), bool)
    voiced = found & loud
    return np.where(voiced, f0, 0.0), voiced


def f0_rmse_cents(ref, deg, sr: int) -> tuple[float, float]:
    """(F0 RMSE in cents over frames voiced in both, voicing agreement in [0, 1]), frame by frame over the
    first min(F_ref, F_deg) YIN frames. The RMSE is NaN when no frame is voiced in both."""
    f_ref, v_ref = yin_f0(ref, sr)
    f_deg, v_deg = yin_f0(deg, sr)
    n = min(len(f_ref), len(f_deg))
    f_ref, v_ref, f_deg, v_deg = f_ref[:n], v_ref[:n], f_deg[:n], v_deg[:n]
    agreement = float((v_ref == v_deg).mean())
    both = v_ref & v_deg
    if not both.any():
        return float("nan"), agreement
    cents = 1200.0 * np.log2(f_deg[both] / f_ref[both])
    return float(np.sqrt(np.mean(cents**2))), agreement


# ---- perceptual scores through optional packages -----------------------------------------
def pesq_score(ref, deg, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, 16 kHz; MOS-LQO 1.0..4.64) of `deg` against `ref`; NaN when the
    `pesq` package finds no speech in them."""
    try:
        from pesq import PesqError, pesq
    except ImportError as exc:
        raise MissingDependency("PESQ needs the `pesq` package: pip install 'faster-chatterbox[quality]'") from exc
    a, b = _at(ref, sr, 16000, "reference"), _at(deg, sr, 16000, "degraded")
    n = min(len(a), len(b))
    try:
        return float(pesq(16000, a[:n], b[:n], "wb"))
    except PesqError:
        return float("nan")


def stoi_score(ref, deg, sr: int) -> float:
    """Short-time objective intelligibility (0..1, Taal et al. 2011) of `deg` against `ref`; NaN for clips
    too short to score (under ~0.8 s of non-silent audio)."""
    try:
        from pystoi import stoi
    except ImportError as exc:
        raise MissingDependency("STOI needs the `pystoi` package: pip install 'faster-chatterbox[quality]'") from exc
    a, b = _mono(ref, "reference"), _mono(deg, "degraded")
    n = min(len(a), len(b))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(stoi(a[:n], b[:n], sr, extended=False))
    # pystoi warns and returns 1e-5 when fewer than 30 non-silent 25.6 ms frames remain: no score.
    return float("nan") if any("Not enough STFT frames" in str(w.message) for w in caught) else score


def loudness_lufs(wav, sr: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4) in LUFS via pyloudnorm; NaN for clips under 0.4 s or silence."""
    try:
        import pyloudnorm
    except ImportError as exc:
        raise MissingDependency("loudness needs `pyloudnorm`: pip install 'faster-chatterbox[quality]'") from exc
    x = _mono(wav)
    if len(x) < int(0.4 * sr):
        return float("nan")
    value = pyloudnorm.Meter(sr).integrated_loudness(x)
    return float(value) if np.isfinite(value) else float("nan")


# ---- artefacts and timing ----------------------------------------------------------------
def click_times(wav, sr: int, k: float = 8.0, block_s: float = 0.01, context_blocks: int = 10,
                merge_s: float = 0.005, max_width_s: float = 0.001, floor: float = 1e-4) -> np.ndarray:
    """Times (s) of clicks: short, isolated outliers of the high-passed signal's sample-to-sample changes.

    d = |second difference| of the signal (its first difference, a high-pass, differenced once more).
    Local scale: the median, over the 2 * context_blocks + 1 surrounding 10 ms blocks (~210 ms), of each
    block's peak d, floored at `floor`; a peak statistic because voiced speech is pulse-like (every block
    holds a glottal pulse), a median so that one click cannot raise its own scale. Samples with
    d > k * scale are outliers; outliers closer than `merge_s` form one event, and an event is a click
    when it spans at most `max_width_s` (a step or a spike: 2-3 samples), which leaves out noise bursts
    such as plosives after silence. A clean tone has d at its local scale; a step or spike is far above it.
    """
    x = _mono(wav)
    d = np.abs(np.diff(x, n=2))
    if d.size == 0:
        return np.zeros(0)
    block = max(1, int(block_s * sr))
    n_blocks = math.ceil(len(d) / block)
    peaks = np.pad(d, (0, n_blocks * block - len(d))).reshape(n_blocks, block).max(axis=1)  # (n_blocks,)
    ctx = np.pad(peaks, context_blocks, mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(ctx, 2 * context_blocks + 1), axis=1)
    scale = np.maximum(np.repeat(local, block)[: len(d)], floor)
    hits = np.flatnonzero(d > k * scale)
    if hits.size == 0:
        return np.zeros(0)
    breaks = np.flatnonzero(np.diff(hits) > merge_s * sr)
    first, last = hits[np.r_[0, breaks + 1]], hits[np.r_[breaks, hits.size - 1]]
    short = last - first <= max_width_s * sr
    return (first[short] + 1) / sr  # d[i] is centred on sample i + 1


def click_count(wav, sr: int) -> int:
    """Number of clicks found by click_times."""
    return int(click_times(wav, sr).size)


def duration_per_char(wav, sr: int, text: str) -> float:
    """Seconds of audio per character of text (speaking rate; ~0.06-0.08 s for natural English)."""
    if not text:
        raise ValueError("text is empty")
    return len(_mono(wav)) / sr / len(text)


# ---- transcripts -------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lower-cased words with punctuation removed (apostrophes inside words kept)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by word-level Levenshtein distance."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        raise ValueError("the reference transcript has no words")
    prev = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        row = [i]
        for j, other in enumerate(hyp, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (word != other)))
        prev = row
    return prev[-1] / len(ref)
