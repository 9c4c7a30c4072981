"""On a local Ray cluster (2 CPUs, the small random checkpoint): the speech app on Ray Serve with two
replicas, through the `openai` client (16 concurrent requests, both replicas answering, a shared voice
library, streaming, a seeded answer identical to the single-process server's), and a book job across the
cluster whose worker and driver are killed mid-way, resumed to exactly an uninterrupted run's audio.

Both tests share one cluster (starting Ray costs ~20 s here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install -e '.[ray]'")
openai = pytest.importorskip("openai")
from ray import serve  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from faster_chatterbox.book import BookModel, Speech, VoiceClip, plan_book, read_book, render_book  # noqa: E402
from faster_chatterbox.random_checkpoint import write_random_checkpoint  # noqa: E402
from faster_chatterbox.server import ServerOptions  # noqa: E402
from faster_chatterbox.server.ray_serve import RayServeConfig, drain, speech_app  # noqa: E402
from faster_chatterbox.tts import ChatterboxTTS  # noqa: E402
from server_helpers import LiveServer, clip_bytes, free_port  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TOKENS = 20  # random weights never stop: each chunk runs to its cap (0.8 s of audio)
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ray") / "ckpt", seed=1, small=True)


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine; its workers import this checkout (PYTHONPATH)."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _speak(client, seed: int, voice: str = "alloy", text: str = "Hello from a replica.", tokens: int = TOKENS):
    response = client.audio.speech.with_raw_response.create(
        model="tts-1", voice=voice, input=text, response_format="pcm",
        extra_body={"seed": seed, "max_new_tokens": tokens})
    return response.headers.get("x-replica"), response.content


def test_serve_replicas_answer_like_the_single_process_server(cluster, checkpoint, tmp_path):
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = RayServeConfig(checkpoint=str(checkpoint), device="cpu", no_watermark=True, replicas=2,
                            voices_dir=str(tmp_path / "voices"), max_concurrency=4)
    try:
        serve.run(speech_app(config), name="speech", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda seed: _speak(client, seed), range(16)))
        assert all(24000 < len(audio) <= 2 * TOKENS * 960 for _, audio in answers)  # 0.5 s to 20 tokens of audio
        assert len({replica for replica, _ in answers}) == 2  # both replicas answered
        assert len({audio for _, audio in answers}) == 16  # 16 seeds, 16 different answers

        # a voice uploaded through one replica is spoken by both: the library is a directory they share (the
        # openai client has no voice upload)
        created = httpx.post(f"http://127.0.0.1:{port}/v1/audio/voices", data={"name": "narrator"},
                             files={"file": ("clip.wav", clip_bytes(), "audio/wav")}, timeout=120)
        assert created.status_code == 201, created.text
        with ThreadPoolExecutor(6) as pool:
            spoken = list(pool.map(lambda seed: _speak(client, seed, voice="narrator"), range(6)))
        assert len({replica for replica, _ in spoken}) == 2

        # streaming passes through Serve's proxy as it is made: several pieces, then the end
        text = "The first sentence is spoken first. Then the second one follows it."
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=text, response_format="pcm",
                extra_body={"seed": 3, "max_new_tokens": 40}) as response:
            pieces = list(response.iter_bytes())
        assert len(pieces) > 2 and sum(map(len, pieces)) > 2 * 24000

        # the same seeded request, answered by the single-process server on the same checkpoint; a replica
        # has one CPU (Ray sets its OMP_NUM_THREADS=1): so does the reference, for the same float sums
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ChatterboxTTS.from_local(checkpoint, device="cpu", watermark=False) as tts, \
                    LiveServer(tts, ServerOptions()) as single:
                reference = _speak(openai.OpenAI(base_url=f"{single.url}/v1", api_key="unused", max_retries=0),
                                   7)[1]
        finally:
            torch.set_num_threads(threads)
        assert reference == answers[7][1]

        # shutting down drains: a stream under way when the drain starts still ends whole (a cut chunked
        # body would raise in the client)
        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(_speak, client, 1, "alloy", "A longer answer, under way when the drain starts.", 150)
            time.sleep(1.0)
            drain("speech")
            assert len(long.result()[1]) > 2 * 24000 * 2  # more than 2 s of 16-bit samples
    finally:
        serve.shutdown()


BOOK = """Chapter 1

It was a bright cold day in April, and the clocks were striking thirteen.

The hallway smelt of boiled cabbage and old rag mats. At one end of it a poster had been tacked to the wall.

Chapter 2

Outside, even through the shut window, the world looked cold. Down in the street little eddies of wind were whirling.

The sun was shining and the sky was a harsh blue. There seemed to be no colour in anything.

Chapter 3

Behind him the voice was still babbling away about pig iron. It was the last chapter, and a short one.
"""


def _render_book_cli(book: Path, out: Path, address: str, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "faster_chatterbox.cli", "render-book", str(book), "-o", str(out),
                             "--ray", address, "--checkpoint", str(book.parent / "ckpt"), "--device", "cpu",
                             "--max-new-tokens", str(TOKENS), "--no-watermark", "--seed", "5"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _done(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())["chunks"]
    except (OSError, ValueError, KeyError):
        return {}


def _chunk_workers() -> list[int]:
    """Ray worker processes rendering a chunk now (Ray titles a busy worker after its task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::_ray_render"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _wait(condition, what: str, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)
    return found


def test_book_killed_mid_way_resumes_to_the_uninterrupted_audio(cluster, checkpoint, tmp_path):
    (tmp_path / "ckpt").symlink_to(checkpoint)
    book = tmp_path / "book.txt"
    book.write_text(BOOK)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    with log.open("w") as f:
        driver = _render_book_cli(book, out, cluster, f)
    try:
        _wait(lambda: len(_done(out)) >= 2, "two chunks", log)
        os.kill(_wait(_chunk_workers, "a busy worker", log)[0], signal.SIGKILL)  # a worker, mid-chunk
        # its chunk is submitted again (the job retries it: test_book checks the retry's record), then the driver
        # itself is killed, before the retried chunk, now last in line, is done with the rest
        _wait(lambda: "retrying" in log.read_text(), "a retried chunk", log)
        driver.kill()
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = _done(out)
    model = BookModel(str(checkpoint), device="cpu")
    total = len(plan_book(read_book(book), model, Speech(max_new_tokens=TOKENS), VoiceClip(), seed=5))
    assert 2 <= len(before) < total, (before, log.read_text())
    assert "retrying" in log.read_text()

    with log.open("w") as f:
        assert _render_book_cli(book, out, cluster, f).wait(240) == 0, log.read_text()
    summary = log.read_text()
    assert f"{total} chunks: {len(before)} already rendered, {total - len(before)} rendered now" in summary
    after = _done(out)
    assert all(after[chunk] == entry for chunk, entry in before.items())  # nothing rendered twice

    # the same book, uninterrupted, in this process (one thread, as a Ray worker of one CPU)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = render_book(book, tmp_path / "whole", model=model,
                             speech=Speech(max_new_tokens=TOKENS), seed=5, watermark=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert report.rendered == total and not report.failed and len(report.chapters) == 3
    for chapter in report.chapters:
        resumed, _ = sf.read(out / "chapters" / chapter.name, dtype="int16")
        whole, _ = sf.read(chapter, dtype="int16")
        np.testing.assert_array_equal(resumed, whole)
