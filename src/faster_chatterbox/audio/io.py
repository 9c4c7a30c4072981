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


# suffix -> (libsndfile format, subtype). Opus is encoded at the supported rate nearest above the input's.
OUTPUT_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def write_audio(path: str | Path, wav: np.ndarray, sr: int, *, float_wav: bool = False) -> None:
    """Write mono audio whole or not at all: to a temporary file beside `path`, then renamed.

    The suffix picks the format (OUTPUT_FORMATS): 16-bit wav (32-bit float with `float_wav`), 16-bit
    flac, ogg/vorbis, ogg/opus, mp3. Opus takes only 8/12/16/24/48 kHz: other rates are resampled
    (soxr) to the next one up. Integer formats clip samples to [-1, 1]. An unknown suffix, empty
    audio or non-finite samples raise ValueError before anything is written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"cannot write {path}: unknown audio format '{path.suffix}'; supported: {', '.join(OUTPUT_FORMATS)}"
        )
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise ValueError(f"cannot write {path}: the audio is empty")
    if not np.isfinite(wav).all():
        raise ValueError(f"cannot write {path}: the audio contains NaN or infinite samples")
    fmt, subtype = OUTPUT_FORMATS[suffix]
    if suffix == ".wav" and float_wav:
        subtype = "FLOAT"
    else:
        wav = np.clip(wav, -1.0, 1.0)
    if subtype == "OPUS" and sr not in OPUS_RATES:
        target = next((rate for rate in OPUS_RATES if rate >= sr), OPUS_RATES[-1])
        wav, sr = resample(wav, sr, target), target
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, wav, sr, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
