"""Seamless joins between separately generated chunks, and a measurement of how seamless they are.

Per chunk: `trim_edges(remove_dc(piece), sr)`; then `join_chunks(pieces, pauses_s, sr)`;
then `measure_joins(wav, sr, spans)` to check the seams. Audio is mono float32 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _frame_db(wav: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames (the last, partial frame included)."""
    n_frames = -(-wav.size // frame)
    padded = np.pad(wav.astype(np.float64), (0, n_frames * frame - wav.size))
    rms = np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def _speech_level_db(frame_db: np.ndarray) -> float:
    """The chunk's speech level: the 90th percentile of its frame levels."""
    return float(np.percentile(frame_db, 90))


def _fade(n: int) -> np.ndarray:
    """Raised-cosine fade-in of n samples, from just above 0 to just below 1."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def remove_dc(wav: np.ndarray) -> np.ndarray:
    """The samples with their mean subtracted (float32)."""
    wav = np.asarray(wav, dtype=np.float32)
    return wav - np.float32(wav.mean()) if wav.size else wav


def trim_edges(
    wav: np.ndarray, sr: int, *, threshold_db: float = -40.0, frame_ms: float = 10.0,
    margin_ms: float = 40.0, fade_ms: float = 5.0,
) -> np.ndarray:
    """Cut leading and trailing silence and low-level noise, keeping a margin, with faded edges.

    A frame counts as sound when its RMS is within `threshold_db` of the chunk's speech level (the
    90th percentile of frame levels), so vocoder hiss and trailing breaths are cut whatever the
    loudness. A chunk with no frame above -70 dBFS is returned as it was.
    """
    wav = np.asarray(wav, dtype=np.float32)
    frame = max(1, int(sr * frame_ms / 1000))
    levels = _frame_db(wav, frame)
    if wav.size == 0 or levels.max() < -70.0:
        return wav
    loud = np.flatnonzero(levels >= _speech_level_db(levels) + threshold_db)
    margin = int(sr * margin_ms / 1000)
    start = max(0, loud[0] * frame - margin)
    end = min(wav.size, (loud[-1] + 1) * frame + margin)
    out = wav[start:end].copy()
    n_fade = min(int(sr * fade_ms / 1000), out.size // 2)
    if start > 0 and n_fade:
        out[:n_fade] *= _fade(n_fade)
    if end < wav.size and n_fade:
        out[-n_fade:] *= _fade(n_fade)[::-1]
    return out


def join_chunks(
    pieces: list[np.ndarray], pauses_s: list[float], sr: int, *, crossfade_ms: float = 20.0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Concatenate pieces: an equal-power crossfade where the pause is 0, else fade-out, silence, fade-in.

    pauses_s[i] separates pieces[i] and pieces[i + 1]. Returns the joined float32 audio and, per
    join, the span [start, end) of output samples the join touched (for `measure_joins`).
    """
    if not pieces:
        raise ValueError("join_chunks needs at least one piece")
    if len(pauses_s) != len(pieces) - 1:
        raise ValueError(f"need {len(pieces) - 1} pauses for {len(pieces)} pieces, got {len(pauses_s)}")
    if any(not np.isfinite(p) or p < 0 for p in pauses_s):
        raise ValueError(f"pauses must be finite and >= 0 seconds, got {list(pauses_s)}")
    pieces = [np.asarray(p, dtype=np.float32).reshape(-1) for p in pieces]
    n_cross = int(sr * crossfade_ms / 1000)
    out, spans = pieces[0].copy(), []
    for piece, pause in zip(pieces[1:], pauses_s):
        n = min(n_cross, out.size, piece.size)
        t = (np.arange(n) + 0.5) / max(n, 1)
        fade_in, fade_out = np.sin(0.5 * np.pi * t).astype(np.float32), np.cos(0.5 * np.pi * t).astype(np.float32)
        start = out.size - n
        if pause == 0:  # (n,) overlap, equal power: fade_in**2 + fade_out**2 == 1
            middle = out[start:] * fade_out + piece[:n] * fade_in
            out = np.concatenate([out[:start], middle, piece[n:]])
            spans.append((start, start + n))
        else:
            silence = np.zeros(int(round(sr * pause)), dtype=np.float32)
            head = piece.copy()
            head[:n] *= _fade(n)
            tail = out[start:] * _fade(n)[::-1]
            out = np.concatenate([out[:start], tail, silence, head])
            spans.append((start, start + 2 * n + silence.size))
    return out, spans


@dataclass(frozen=True)
class JoinReport:
    """Seams measured against the speech around them; ratios are against the 99th percentile inside speech."""

    max_step: list[float]  # per join: largest |x[i+1] - x[i]| in its span
    flux: list[float]  # per join: largest high-band spectral flux of frames touching its span
    step_ratio: list[float]
    flux_ratio: list[float]
    speech_step_p99: float
    speech_step_max: float
    speech_flux_p99: float  # floored at 1% of the median frame magnitude
    speech_flux_max: float
    clicks: int  # joins whose step or flux ratio exceeds the limit

    @property
    def ok(self) -> bool:
        return self.clicks == 0


def _spectral_flux(wav: np.ndarray, sr: int, n_fft: int, hop: int, min_hz: float) -> tuple[np.ndarray, float]:
    """Positive spectral flux above `min_hz` per frame (frame i against frame i-1; flux[0] = 0), and a
    level floor for it: 1% of the median full-band frame magnitude (so steady tones do not give ratios
    against zero)."""
    n_frames = 1 + max(0, wav.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    mag = np.abs(np.fft.rfft(wav[idx] * np.hanning(n_fft), axis=1))  # (frames, n_fft // 2 + 1)
    high = mag[:, int(min_hz * n_fft / sr):]
    rise = np.maximum(np.diff(high, axis=0), 0.0)
    flux = np.concatenate([[0.0], np.sqrt((rise**2).sum(axis=1))])
    return flux, 0.01 * float(np.median(np.sqrt((mag**2).sum(axis=1))))


def measure_joins(
    wav: np.ndarray, sr: int, join_spans: list[tuple[int, int]], *, limit: float = 4.0,
    threshold_db: float = -30.0, guard_ms: float = 2.0, flux_min_hz: float = 4000.0,
) -> JoinReport:
    """Largest sample step and high-band spectral flux at each join, against their distribution in speech.

    A click is broadband, so the flux is taken above `flux_min_hz`, where a join's fades add nothing.
    Speech is every 10 ms frame within `threshold_db` of the speech level, away from the joins. A
    join is counted as a click when its step or its flux exceeds `limit` times the speech 99th
    percentile and the largest value found in speech elsewhere.
    """
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    n_fft, hop, frame, guard = 512, 128, int(sr * 0.01), int(sr * guard_ms / 1000)
    step = np.abs(np.diff(wav))
    flux, flux_floor = _spectral_flux(wav, sr, n_fft, hop, flux_min_hz)
    frame_starts = hop * np.arange(flux.size)
    levels = _frame_db(wav, frame)
    speech_sample = np.repeat(levels >= _speech_level_db(levels) + threshold_db, frame)[: step.size]
    away_steps, away_frames = speech_sample.copy(), np.ones(flux.size, bool)
    join_steps, join_flux = [], []
    for start, end in join_spans:
        lo, hi = max(0, start - guard), min(step.size, end + guard)
        join_steps.append(float(step[lo:hi].max()) if hi > lo else 0.0)
        touching = (frame_starts + n_fft > lo) & (frame_starts - hop < hi)  # frames whose flux sees the span
        join_flux.append(float(flux[touching].max()) if touching.any() else 0.0)
        away_steps[max(0, lo - n_fft) : hi + n_fft] = False
        away_frames &= ~((frame_starts + 2 * n_fft > lo) & (frame_starts - 2 * hop < hi))
    away_frames &= speech_sample[np.minimum(frame_starts + n_fft // 2, speech_sample.size - 1)]
    ref_steps = step[away_steps] if away_steps.any() else step
    ref_flux = flux[away_frames] if away_frames.any() else flux
    s99, smax = float(np.percentile(ref_steps, 99)), float(ref_steps.max())
    f99, fmax = max(float(np.percentile(ref_flux, 99)), flux_floor), float(ref_flux.max())
    step_ratio = [s / max(s99, 1e-12) for s in join_steps]
    flux_ratio = [f / f99 for f in join_flux]
    clicks = sum(
        (s > limit * s99 and s > smax) or (f > limit * f99 and f > fmax) for s, f in zip(join_steps, join_flux)
    )
    return JoinReport(join_steps, join_flux, step_ratio, flux_ratio, s99, smax, f99, fmax, clicks)
