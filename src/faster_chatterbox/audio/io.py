"""Reading reference clips and writing audio files.

Reference clips are read the way upstream reads them (librosa.load at 24 kHz, soxr 'HQ'
resampling, channels averaged), so the voice conditionals match upstream's bit for bit.
"""

from __future__ import annotations

import io
import logging
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

# The shortest reference clip taken. Half a second holds a syllable or two: 12 speech tokens (25 Hz) for T3's
# prompt and S3Gen, 50 fbank frames (100 Hz) for CAMPPlus's statistics pooling, a third of the voice encoder's
# 1.6 s window; a shorter clip gives speaker embeddings of a fraction of a syllable. Far shorter clips break the
# models (measured on the small checkpoint, every preset): up to 0.03 s S3Gen's mel (n_fft 1920) cannot
# reflect-pad the clip (RuntimeError), and at 0.04 s CAMPPlus's one fbank frame makes the x-vector NaN.
MIN_REFERENCE_SECONDS = 0.5
# T3 takes its speech prompt from the first 6 s and S3Gen its reference from the first 10 s: a clip under 5 s
# still works but gives both less than they were trained on, and a poorer likeness.
SHORT_REFERENCE_SECONDS = 5.0
# load_audio reads this far past `max_seconds`: the resampler's filter looks ahead, so the samples kept are then
# those a whole-file read gives (bit-identical in each of 264 cases measured: 8-96 kHz to 16 and 24 kHz, limits
# of 1-10 s). Reading no further than the limit changes its last ~35 ms, by up to 4e-2.
_RESAMPLER_TAIL_SECONDS = 0.1


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr HQ) with librosa's output length, ceil(len * (sr_out / sr_in))."""
    if sr_in == sr_out:
        return wav
    n_out = int(math.ceil(wav.shape[-1] * (sr_out / sr_in)))  # librosa's float rounding, kept on purpose
    out = soxr.resample(wav, sr_in, sr_out, quality="HQ").astype(wav.dtype, copy=False)
    if out.shape[-1] < n_out:
        out = np.pad(out, (0, n_out - out.shape[-1]))
    return out[:n_out]


def check_reference_clip(wav: np.ndarray, sr: int, name: str) -> None:
    """Raise ValueError for a reference clip no voice can be made of; log a warning when it is short.

    wav: mono samples (N,) at `sr` Hz; name: the clip in messages (its path).
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"reference audio {name} must be mono samples of shape (N,), got shape {wav.shape}")
    if not (isinstance(sr, (int, np.integer)) and sr > 0):
        raise ValueError(f"reference audio {name}: the sample rate must be a positive integer, got {sr!r}")
    if wav.size == 0:
        raise ValueError(f"reference audio {name} is empty")
    if not np.isfinite(wav).all():
        raise ValueError(f"reference audio {name} contains NaN or infinite samples")
    if np.abs(wav).max() < 1e-4:
        raise ValueError(f"reference audio {name} is silent (peak below -80 dBFS)")
    seconds = wav.size / sr
    if seconds < MIN_REFERENCE_SECONDS:
        shown = math.floor(seconds * 1000) / 1000  # rounded down: 0.4996 s must not read as the 0.5 s minimum
        raise ValueError(f"reference audio {name} is {shown:g} s long; a voice needs at least "
                         f"{MIN_REFERENCE_SECONDS:g} s of speech (10 s of clean speech is best)")
    if seconds < SHORT_REFERENCE_SECONDS:
        log.warning("reference audio %s is only %.1f s long: the voice will be poor; 10 s of clean speech is best",
                    name, seconds)


def load_audio(path: str | Path, sr: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples of an audio file at `sr` Hz, checked by `check_reference_clip` (ValueError).

    max_seconds: decode no more of the file than its first `max_seconds` need (at least MIN_REFERENCE_SECONDS).
    A clip no longer is returned whole, exactly as without the limit; a longer one as its first
    ceil(max_seconds * sr) samples, equal to those of a whole-file read (see _RESAMPLER_TAIL_SECONDS).
    None: the whole file.
    """
    path = Path(path)
    if max_seconds is not None and not MIN_REFERENCE_SECONDS <= max_seconds < math.inf:
        raise ValueError(f"max_seconds must be at least {MIN_REFERENCE_SECONDS:g} (or None), got {max_seconds!r}")
    if not path.is_file():
        raise ValueError(f"reference audio {path} does not exist or is not a file")
    try:
        with sf.SoundFile(str(path)) as file:
            sr_in = file.samplerate
            frames = -1 if max_seconds is None else math.ceil((max_seconds + _RESAMPLER_TAIL_SECONDS) * sr_in)
            wav = file.read(frames, dtype="float32", always_2d=True)  # (N, channels), N <= frames
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise ValueError(f"reference audio {path} cannot be read: {exc}") from exc
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    check_reference_clip(wav, sr_in, str(path))
    out = resample(np.ascontiguousarray(wav), sr_in, sr)
    if max_seconds is not None and wav.size > max_seconds * sr_in:  # longer than the limit: cut after resampling
        out = out[: math.ceil(max_seconds * sr)]
    return out


# suffix -> (libsndfile format, subtype). Opus is encoded at the supported rate nearest above the input's.
OUTPUT_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Bytes per second of 24 kHz mono speech in each format, rounded well down (measured on write_audio's output:
# wav 48 000, flac ~33 000, ogg ~6 500, opus ~4 700, mp3 ~6 900): estimates made with them err low.
MIN_BYTES_PER_SECOND = {".wav": 48000, ".flac": 16000, ".ogg": 3000, ".opus": 2000, ".mp3": 3000}


def _output_format(path: Path) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write {path}: unknown audio format (unsupported extension '{path.suffix}'); "
                         f"supported: {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def _new_file_beside(path: Path) -> tuple[int, Path]:
    """A new, empty, hidden file in path's folder, open for writing: (descriptor, path).

    Made with mode 0o666 for the kernel to apply the umask (and default ACLs), as open() makes files:
    tempfile.mkstemp would make every output 0o600.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def check_output_path(path: str | Path, min_free_bytes: int = 1 << 20) -> Path:
    """Raise ValueError naming `path` unless write_audio can write there; returns it as a Path.

    Checks, without creating anything: a supported suffix, not a folder, the nearest existing folder on the
    way (write_audio makes the missing ones) is a folder where a file can really be made (tried: permissions,
    read-only or immutable folders and file systems), and at least `min_free_bytes` free there.
    """
    path = Path(path)
    _output_format(path)
    folder = path.parent
    try:
        if path.is_dir():
            raise ValueError(f"cannot write {path}: it is a folder")
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"cannot write {path}: {folder} is not a folder")
        fd, probe = _new_file_beside(folder / path.name)
        os.close(fd)
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:  # read-only or immutable, no permission, no inode left, a folder that cannot be searched
        raise ValueError(f"cannot write {path}: cannot create a file in {folder} ({exc.strerror or exc})") from exc
    if free < min_free_bytes:
        raise ValueError(f"cannot write {path}: only {free / 1e6:.2f} MB free in {folder}, "
                         f"about {min_free_bytes / 1e6:.2f} MB needed")
    return path


def write_audio(path: str | Path, wav: np.ndarray, sr: int, *, float_wav: bool = False) -> None:
    """Write mono audio whole or not at all: encoded in memory, written to a hidden file beside `path`, renamed.

    The suffix picks the format (OUTPUT_FORMATS): 16-bit wav (32-bit float with `float_wav`), 16-bit
    flac, ogg/vorbis, ogg/opus, mp3. Opus takes only 8/12/16/24/48 kHz: other rates are resampled
    (soxr) to the next one up. Integer formats clip samples to [-1, 1]. An unknown suffix, empty
    audio or non-finite samples raise ValueError before anything is written; a failed write (no space
    left, read-only, a folder in the way...) raises OSError naming `path`, with nothing left behind.
    The file gets the usual mode, 0o666 less the umask.
    """
    path = Path(path)
    fmt, subtype = _output_format(path)
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise ValueError(f"cannot write {path}: the audio is empty")
    if not np.isfinite(wav).all():
        raise ValueError(f"cannot write {path}: the audio contains NaN or infinite samples")
    if path.suffix.lower() == ".wav" and float_wav:
        subtype = "FLOAT"
    else:
        wav = np.clip(wav, -1.0, 1.0)
    if subtype == "OPUS" and sr not in OPUS_RATES:
        target = next((rate for rate in OPUS_RATES if rate >= sr), OPUS_RATES[-1])
        wav, sr = resample(wav, sr, target), target
    # Encoding in memory keeps libsndfile's errors apart from the file system's: libsndfile reports a full
    # disk as "System error.", Python's own writes report it by its errno.
    encoded = io.BytesIO()
    try:
        sf.write(encoded, wav, sr, format=fmt, subtype=subtype)
    except sf.LibsndfileError as exc:  # e.g. a sample rate the format does not take
        raise ValueError(f"cannot write {path}: {exc.error_string.removeprefix('Error : ')}") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_file_beside(path)
        try:
            with open(fd, "wb") as file:
                file.write(encoded.getbuffer())
                file.flush()
                os.fsync(file.fileno())  # a full disk or quota shows here at the latest, before the rename
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
