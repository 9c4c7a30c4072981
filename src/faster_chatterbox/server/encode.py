"""Streaming audio encoders for the speech API: float32 pieces in, bytes of a response format out.

Every format streams: `encode(piece)` returns the bytes that piece completes (possibly none: the codecs
buffer a frame or two), `finish()` the rest. Compressed formats are muxed by PyAV (FFmpeg) into a sink
that cannot seek, so each container writes what a streamed file needs and nothing is patched afterwards:
  mp3   MPEG layer III frames (libmp3lame), no Xing header
  opus  Ogg Opus (libopus) at 24 kHz, as OpenAI's `opus`
  aac   ADTS frames (FFmpeg's AAC encoder), as OpenAI's `aac`
  flac  native FLAC; STREAMINFO says the length is unknown (allowed by the format)
  wav   16-bit PCM; a streamed header says the length is unknown (0xFFFFFFFF, as OpenAI's streamed WAV),
        a whole file (`exact_length`) gets the exact sizes
  pcm   raw 16-bit little-endian mono samples at 24 kHz, no header
`speed` != 1 time-stretches without changing pitch (FFmpeg's atempo filters, never resampling).
"""

from __future__ import annotations

import struct
from fractions import Fraction

import av
import numpy as np

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
# format -> (PyAV container, codec, encoder sample format, bit rate or None)
_CODECS = {"mp3": ("mp3", "libmp3lame", "s16p", 128_000), "opus": ("ogg", "libopus", "s16", 64_000),
           "aac": ("adts", "aac", "fltp", 96_000), "flac": ("flac", "flac", "s16", None)}
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class _Sink:
    """A write-only file for PyAV: no seek or tell, so the muxers write a streamable layout."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def wav_header(sample_rate: int, n_samples: int | None) -> bytes:
    """A 44-byte header of 16-bit mono PCM; n_samples None: the length is unknown (a stream)."""
    data = 0xFFFFFFFF if n_samples is None else 2 * n_samples
    riff = 0xFFFFFFFF if n_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data))


def to_s16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")


def atempo_chain(speed: float) -> list[float]:
    """Factors of `speed` each in atempo's sweet spot [0.5, 2] (outside it the filter skips or repeats
    whole windows), e.g. 0.25 -> [0.5, 0.5], 3 -> [2, 1.5]."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {speed}")
    factors = []
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    return [*factors, speed]


class _TimeStretch:
    """Pitch-preserving tempo change of a float32 mono stream, piece by piece."""

    def __init__(self, sample_rate: int, speed: float):
        self.sr = sample_rate
        self.graph = av.filter.Graph()
        node = self.graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate))
        self.source = node
        for factor in atempo_chain(speed):
            nxt = self.graph.add("atempo", f"{factor:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self.graph.add("abuffersink")
        node.link_to(sink)
        self.graph.configure()
        self.pts = 0

    def push(self, audio: np.ndarray | None) -> np.ndarray:
        """Stretch `audio` (None: flush the end); returns what the filters have ready."""
        if audio is None:
            self.source.push(None)
        else:
            frame = av.AudioFrame.from_ndarray(np.asarray(audio, dtype=np.float32)[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self.sr, self.pts, Fraction(1, self.sr)
            self.pts += len(audio)
            self.source.push(frame)
        out = []
        while True:
            try:
                out.append(self.graph.pull().to_ndarray().reshape(-1))
            except (av.error.BlockingIOError, av.error.EOFError):
                break
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class AudioEncoder:
    """Encode mono float32 audio at `sample_rate` to `fmt`, piece by piece.

    exact_length: the caller will hand the whole audio before taking any bytes (a non-streamed response),
    so WAV can carry its exact sizes: `finish()` then returns the whole file.
    """

    def __init__(self, fmt: str, sample_rate: int, speed: float = 1.0, *, exact_length: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"unknown response_format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.fmt, self.sr, self.exact = fmt, sample_rate, exact_length
        self.stretch = _TimeStretch(sample_rate, speed) if speed != 1.0 else None
        self.samples = 0  # samples out (after the time stretch)
        self._held: list[np.ndarray] = []  # exact-length WAV: everything, until finish
        self._header_sent = False
        self._container = self._stream = None
        if fmt in _CODECS:
            container, codec, sample_fmt, bit_rate = _CODECS[fmt]
            self._sink = _Sink()
            # Ogg pages are cut every 1 s by default: at most 100 ms here, so Opus bytes leave as made
            options = {"page_duration": "100000"} if container == "ogg" else {}
            self._container = av.open(self._sink, mode="w", format=container, options=options)
            self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
            self._stream.format = sample_fmt
            if bit_rate:
                self._stream.bit_rate = bit_rate
            self._pts = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.sr

    def encode(self, audio: np.ndarray) -> bytes:
        if self.stretch is not None:
            audio = self.stretch.push(audio)
        return self._encode(np.asarray(audio, dtype=np.float32).reshape(-1))

    def finish(self) -> bytes:
        tail = self._encode(self.stretch.push(None)) if self.stretch is not None else b""
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            return tail + self._sink.take()
        if self.fmt == "wav" and self.exact:
            pcm = b"".join(to_s16(a).tobytes() for a in self._held)
            return wav_header(self.sr, len(pcm) // 2) + pcm
        if self.fmt == "wav" and not self._header_sent:  # nothing was spoken: still a valid (empty) file
            self._header_sent = True
            return tail + wav_header(self.sr, None)
        return tail

    def _encode(self, audio: np.ndarray) -> bytes:
        self.samples += len(audio)
        if self.fmt == "wav" and self.exact:
            self._held.append(audio)
            return b""
        if self._container is None:  # pcm, streamed wav
            head = b""
            if self.fmt == "wav" and not self._header_sent:
                head, self._header_sent = wav_header(self.sr, None), True
            return head + to_s16(audio).tobytes()
        if not len(audio):
            return b""
        frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.sr, self._pts
        self._pts += len(audio)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()
