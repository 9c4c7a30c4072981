"""Failure detectors for one generated chunk: what makes the long-text pipeline regenerate it.

From the speech tokens (before S3Gen runs):
  truncated   far fewer tokens than the text should take (T3 stopped early)
  runaway     far more, or the token budget ran out without a stop token
  loop        a short token pattern repeated over and over (T3 stuck in a cycle)
From the audio (after S3Gen):
  silence     a long silence inside the chunk
  drift       the chunk's x-vector far from the voice's (another speaker, or no voice at all)

Expected length: English narration runs at ~16.7 characters per second (the seed plan's 1,200 characters
take ~72 s), i.e. 1.5 speech tokens (25 Hz) per character. The bounds are wide on purpose: a retry costs
a whole chunk, so only clear failures trigger one.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

TOKENS_PER_SECOND = 25
CHARS_PER_SECOND = 16.7


@dataclass(frozen=True)
class CheckLimits:
    min_length_ratio: float = 0.3  # truncated below 0.3x the expected tokens
    max_length_ratio: float = 3.0  # runaway above 3x
    min_expected_tokens: int = 40  # texts shorter than ~1.6 s vary too much for the length checks
    loop_max_period: int = 25  # patterns of 2..25 tokens (up to 1 s) ...
    loop_min_tokens: int = 50  # ... repeated over at least 2 s of tokens count as a loop
    max_silence_s: float = 2.0  # a silence longer than this inside a chunk
    silence_db: float = -40.0  # frames this far under the chunk's speech level are silent
    min_speaker_similarity: float = 0.4  # cosine of the chunk's x-vector to the voice's


class Failure(NamedTuple):
    """Why a chunk attempt failed, and how badly: `badness` >= 1 is how far past its limit it went (2: twice
    the allowed length, silence or loop); the least bad attempt is kept when every attempt fails."""

    reason: str
    badness: float


def expected_tokens(text: str) -> float:
    """Speech tokens a text of this length typically takes. A wide character (Chinese, Japanese, Korean: a
    syllable or more each, ~5 per second) counts as three."""
    wide = sum(unicodedata.east_asian_width(ch) in "WF" for ch in text)
    return (len(text) + 2 * wide) / CHARS_PER_SECOND * TOKENS_PER_SECOND


def token_budget(text: str, cap: int, factor: float = 2.5, floor: int = 50) -> int:
    """A chunk's token budget: `factor` times its expected length (at least `floor`), at most `cap`."""
    return max(1, min(cap, max(floor, round(factor * expected_tokens(text)))))


def loop_length(tokens: list[int], max_period: int) -> int:
    """Length of the longest run where the sequence repeats itself with some period in [2, max_period]."""
    x = np.asarray(tokens)
    longest = 0
    for period in range(2, min(max_period, len(x) // 2) + 1):
        same = x[period:] == x[:-period]  # same[i]: token i + period repeats token i
        if not same.any():
            continue
        # longest run of True in `same`, plus the period it repeats
        edges = np.flatnonzero(np.diff(np.concatenate(([0], same.astype(np.int8), [0]))))
        run = int((edges[1::2] - edges[::2]).max())
        longest = max(longest, run + period)
    return longest


def token_failure(tokens: list[int], text: str, stopped: bool, limits: CheckLimits = CheckLimits()) -> Failure | None:
    """Why these speech tokens (stop token excluded) are a failed rendering of `text`, or None.

    stopped: whether T3 sampled its stop token (False: the budget ran out).
    """
    expected = expected_tokens(text)
    if not tokens:
        return Failure("no speech: T3 sampled its stop token at once", math.inf)
    if not stopped:
        return Failure(f"runaway: no stop token within the budget of {len(tokens)} tokens",
                       max(1.0, len(tokens) / (limits.max_length_ratio * max(expected, 1.0))))
    if expected >= limits.min_expected_tokens:
        if len(tokens) < limits.min_length_ratio * expected:
            return Failure(f"truncated: {len(tokens)} tokens for ~{expected:.0f} expected",
                           limits.min_length_ratio * expected / len(tokens))
        if len(tokens) > limits.max_length_ratio * expected:
            return Failure(f"runaway: {len(tokens)} tokens for ~{expected:.0f} expected",
                           len(tokens) / (limits.max_length_ratio * expected))
    loop = loop_length(tokens, limits.loop_max_period)
    if loop >= limits.loop_min_tokens:
        return Failure(f"loop: a repeating token pattern over {loop} tokens ({loop / TOKENS_PER_SECOND:.1f} s)",
                       loop / limits.loop_min_tokens)
    return None


def longest_inner_silence(wav: np.ndarray, sr: int, silence_db: float, frame_s: float = 0.02) -> float:
    """Seconds of the longest run of silent frames that has sound on both sides."""
    frame = max(1, round(frame_s * sr))
    n = len(wav) // frame
    if n < 3:
        return 0.0
    rms = np.sqrt(np.mean(np.square(wav[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)) + 1e-10
    level = np.percentile(rms, 95)
    silent = 20 * np.log10(rms / level) < silence_db
    loud = np.flatnonzero(~silent)
    if len(loud) < 2:
        return 0.0
    inner = silent[loud[0] : loud[-1] + 1].astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inner, [0]))))
    runs = edges[1::2] - edges[::2]
    return float(runs.max()) * frame / sr if len(runs) else 0.0


def speaker_similarity(embedding: torch.Tensor, voice_embedding: torch.Tensor) -> float:
    """Cosine similarity of two x-vectors (any leading shape of one row)."""
    a, b = embedding.reshape(-1).float(), voice_embedding.reshape(-1).float().to(embedding.device)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def audio_failure(wav: np.ndarray, sr: int, similarity: float | None,
                  limits: CheckLimits = CheckLimits()) -> Failure | None:
    """Why a chunk's audio is a failure, or None. similarity: speaker_similarity to the voice (None: unchecked)."""
    silence = longest_inner_silence(wav, sr, limits.silence_db)
    if silence > limits.max_silence_s:
        return Failure(f"silence: {silence:.1f} s of silence inside the chunk", silence / limits.max_silence_s)
    if similarity is not None and similarity < limits.min_speaker_similarity:
        return Failure(f"drift: speaker similarity {similarity:.2f} to the voice (< {limits.min_speaker_similarity})",
                       1.0 + limits.min_speaker_similarity - similarity)
    return None
