"""Reading reference clips and writing audio files.

Reference clips are read the way upstream reads them (librosa.load at 24 kHz, soxr 'HQ'
resampling, channels averaged), so the voice conditionals match upstream's bit for bit.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr HQ) with librosa's output length, ceil(len * (sr_out / sr_in))."""
    if sr_in == sr_out:
        return wav
    n_out = int(math.ceil(wav.shape[-1] * (sr_out / sr_in)))  # librosa's float rounding, kept on purpose
    out = soxr.resample(wav, sr_in, sr_out, quality="HQ").astype(wav.dtype, copy=False)
    if out.shape[-1] < n_out:
        out = np.pad(out, (0, n_out - out.shape[-1]))
    return out[:n_out]


def load_audio(path: str | Path, sr: int) -> np.ndarray:
    """Mono float32 samples of an audio file at `sr` Hz; a clear ValueError for unusable files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference audio {path} does not exist or is not a file")
    try:
        wav, sr_in = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise ValueError(f"reference audio {path} cannot be read: {exc}") from exc
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if wav.size == 0:
        raise ValueError(f"reference audio {path} is empty")
    if not np.isfinite(wav).all():
        raise ValueError(f"reference audio {path} contains NaN or infinite samples")
    if np.abs(wav).max() < 1e-4:
        raise ValueError(f"reference audio {path} is silent (peak below -80 dBFS)")
    return resample(np.ascontiguousarray(wav), sr_in, sr)


def write_audio(path: str | Path, wav: np.ndarray, sr: int) -> None:
    """Write mono audio whole or not at all: to a temporary file beside `path`, then renamed.

    The format follows the suffix (wav, flac, ogg; see soundfile.available_formats()).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"cannot write {path}: unknown audio format '.{fmt.lower()}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.asarray(wav, dtype=np.float32).reshape(-1), sr, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
