"""Shared by the server tests: one small random-weight model per test process, live servers on free
loopback ports (uvicorn in a background thread), and audio decoding."""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server extra: pip install -e '.[server]'")
import av  # noqa: E402
import soundfile as sf  # noqa: E402
import uvicorn  # noqa: E402

from faster_chatterbox.audio.synthetic import synthetic_voice  # noqa: E402
from faster_chatterbox.random_checkpoint import write_random_checkpoint  # noqa: E402
from faster_chatterbox.server import ServerOptions, create_app  # noqa: E402
from faster_chatterbox.tts import ChatterboxTTS  # noqa: E402

SR = 24000


@functools.cache
def small_tts() -> ChatterboxTTS:
    """The small random checkpoint's model, loaded once per process (every server test shares it, as
    every request of a server does)."""
    root = Path(tempfile.mkdtemp(prefix="fcb-server-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    ckpt = write_random_checkpoint(root / "ckpt", seed=1, small=True)
    tts = ChatterboxTTS.from_local(ckpt, device="cpu", watermark=False)
    atexit.register(tts.close)
    for _ in tts.generate_stream("Warm up.", seed=0, max_new_tokens=30):  # as `serve` does before it opens
        pass
    return tts


def family_tts(model: str, cache: Path):
    """`serve --model MODEL --random-weights small`'s model, loaded as `serve` loads it (the checkpoint
    written under `cache`) and warmed up; the caller closes it."""
    from faster_chatterbox.cli import build_parser
    from faster_chatterbox.server.main import load_model, warm_up

    args = build_parser().parse_args(["serve", "--model", model, "--random-weights", "small", "--device", "cpu",
                                      "--no-watermark"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTER_CHATTERBOX_CACHE", str(cache))
        tts = load_model(args)
    warm_up(tts)
    return tts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """create_app(tts, options) served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, tts=None, options: ServerOptions | None = None):
        self.tts = tts or small_tts()
        self.app = create_app(self.tts, options or ServerOptions())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def metrics(self):
        return self.app.state.metrics

    def metric(self, name: str, **labels) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def clip_bytes(seconds: float = 4.0, seed: int = 9, fmt: str = "WAV", sr: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_voice(seconds, sr, seed=seed), sr, format=fmt)
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Any container PyAV reads -> mono float32 samples at the decoder's rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono")  # the rate is left as decoded
        parts = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                 for out in resampler.resample(frame)]
        parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        rate = stream.codec_context.sample_rate
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
