"""Reference clips from uploads: any audio FFmpeg reads (wav, flac, mp3, ogg, m4a, webm...), decoded with
PyAV and checked before anything is stored, then kept as a float WAV of its first 30 s (what the engine
reads of a clip; pipeline.VOICE_SECONDS)."""

from __future__ import annotations

import io

import av
import numpy as np
import soundfile as sf

from ..pipeline import VOICE_SECONDS

MIN_SECONDS = 1.0  # shorter clips give no usable speaker embedding


def decode_clip(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate; a ValueError saying what is wrong with the clip."""
    if not data:
        raise ValueError("the uploaded file is empty")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ValueError("the uploaded file has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if not rate:
                raise ValueError("the uploaded audio has no sample rate")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
                    total += len(parts[-1])
                if total >= VOICE_SECONDS * rate:  # the rest is never read: don't decode it
                    break
    except ValueError:
        raise
    except (av.FFmpegError, OSError, RuntimeError, IndexError) as exc:
        raise ValueError(f"the uploaded file is not audio FFmpeg can read ({type(exc).__name__})") from None
    wav = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    wav = wav[: int(VOICE_SECONDS * rate)]
    if not len(wav):
        raise ValueError("the uploaded audio holds no samples")
    if not np.isfinite(wav).all():
        raise ValueError("the uploaded audio holds NaN or infinite samples")
    if len(wav) < MIN_SECONDS * rate:
        raise ValueError(f"the uploaded clip is {len(wav) / rate:.2f} s long: give at least {MIN_SECONDS:g} s "
                         "(10 s or more of clean speech is best)")
    if np.abs(wav).max() < 1e-4:
        raise ValueError("the uploaded audio is silent (peak below -80 dBFS)")
    return wav, rate


def clip_wav(wav: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
