"""The streaming encoders alone: a time stretch that keeps the pitch, the atempo chain, headers, and
bytes that leave piece by piece."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from server_helpers import SR, decode, pcm

pytest.importorskip("av")
from faster_chatterbox.server.encode import FORMATS, AudioEncoder, atempo_chain, wav_header  # noqa: E402


def tone(seconds=2.0, hz=220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(fmt, audio, speed=1.0, piece=4800, **kwargs) -> list[bytes]:
    encoder = AudioEncoder(fmt, SR, speed, **kwargs)
    return [encoder.encode(audio[i : i + piece]) for i in range(0, len(audio), piece)] + [encoder.finish()]


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_changes_duration_not_pitch(speed):
    out = pcm(b"".join(encode("pcm", tone(), speed)))
    assert abs(len(out) / SR - 2.0 / speed) < 0.05 * 2.0 / speed  # the tempo changed...
    assert abs(peak_hz(out, SR) - 220.0) < 3.0  # ...the pitch did not (resampling would move it to 220 * speed)


def test_atempo_chain_keeps_each_factor_in_range():
    for speed in (0.25, 0.3, 0.5, 1.0, 1.7, 2.0, 3.0, 4.0):
        chain = atempo_chain(speed)
        assert all(0.5 <= f <= 2.0 for f in chain) and np.isclose(np.prod(chain), speed)
    with pytest.raises(ValueError, match="speed"):
        atempo_chain(4.5)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pcm"])
def test_every_format_streams_piece_by_piece(fmt):
    parts = encode(fmt, tone(3.0))
    assert sum(1 for p in parts[:-1] if p) >= 3  # bytes leave while the audio is still coming
    audio, rate = decode(b"".join(parts))
    assert abs(len(audio) / rate - 3.0) < 0.1 and abs(peak_hz(audio, rate) - 220.0) < 3.0


def test_opus_says_24khz_and_wav_headers():
    data = b"".join(encode("opus", tone()))
    head = data.index(b"OpusHead")
    assert struct.unpack("<I", data[head + 12 : head + 16])[0] == SR  # the input rate, as OpenAI's 24 kHz opus
    streamed = b"".join(encode("wav", tone()))
    assert streamed[:44] == wav_header(SR, None) and len(streamed) == 44 + 2 * 2 * SR
    whole = encode("wav", tone(), exact_length=True)
    assert not any(whole[:-1]) and whole[-1][:44] == wav_header(SR, 2 * SR)  # the sizes are exact
    assert struct.unpack("<I", whole[-1][40:44])[0] == 4 * SR
