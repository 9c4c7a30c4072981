"""`faster-chatterbox serve` as a process: a random small checkpoint made and said so, the model warm
before the port opens, SIGTERM drains an in-flight stream and exits 0; without the server extra, one
line saying what to install."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_helpers import free_port

SRC = Path(__file__).resolve().parents[1] / "src"


def _env(tmp_path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "FASTER_CHATTERBOX_CACHE": str(tmp_path / "cache")}


def test_serve_drains_on_sigterm_and_exits_0(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faster_chatterbox.cli", "serve", "--random-weights", "small",
                                 "--port", str(port), "--voices-dir", str(tmp_path / "voices")],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        startup = log.read_text()
        # loaded and warmed before the port opened; random weights said loudly
        assert startup.index("warmed up") < startup.index("Uvicorn running") and "RANDOM WEIGHTS" in startup
        assert httpx.get(f"{url}/info").json()["random_weights"] is True

        received, status = [], []
        first = threading.Event()

        def stream():
            body = {"model": "tts-1", "input": "Draining takes this whole sentence. And this one too.",
                    "voice": "alloy", "response_format": "pcm", "max_new_tokens": 60}
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as response:
                status.append(response.status_code)
                for chunk in response.iter_bytes():
                    received.append(len(chunk))
                    first.set()

        client = threading.Thread(target=stream)
        client.start()
        assert first.wait(60), log.read_text()
        proc.send_signal(signal.SIGTERM)  # mid-stream
        client.join(timeout=120)
        assert proc.wait(timeout=120) == 0, log.read_text()
        assert status == [200] and len(received) > 1 and sum(received) > 2 * 24000  # finished, not cut
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_the_extra_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from faster_chatterbox.cli import main; "
            "sys.exit(main(['serve', '--random-weights', 'small']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: the server needs its extra (fastapi is missing): pip install 'faster-chatterbox[server]'"]
