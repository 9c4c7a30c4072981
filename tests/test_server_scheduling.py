"""Scheduling at the server: a seeded request is the same alone and beside 7 others; the queue bound
(429 with Retry-After, only past it); the request timeout (504 before any audio, an aborted stream after);
a client that leaves mid-stream has its decoding cancelled in the engine's T3 scheduler."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from faster_chatterbox.server import ServerOptions
from server_helpers import LiveServer, clip_bytes, pcm

LONG = " ".join(f"Sentence number {i} of a long text that keeps the model busy for a while." for i in range(30))


def speak(url, **body):
    return httpx.post(f"{url}/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "voice": "alloy", "response_format": "pcm", "max_new_tokens": 20, **body})


@pytest.fixture
def t3_watch(monkeypatch):
    """The engine's T3 scheduler, watched: every request it gets (their Futures) and every request it drops
    from its running batch. Its decoding is slowed to ~12 ms a token: the small model would otherwise
    decode a whole chunk (~1 s) before the server's worker reaches its next piece and closes the
    generator, and there would be nothing left to cancel."""
    from faster_chatterbox.engine.batch_decode import DecodeBatch
    from server_helpers import small_tts

    scheduler = small_tts().engine.scheduler
    watch = {"futures": [], "dropped": [], "delay": 0.05}
    submit, advance, remove = scheduler.submit, DecodeBatch.advance, DecodeBatch.remove

    def recording_submit(request, on_tokens=None, **options):
        future = submit(request, on_tokens, **options)
        watch["futures"].append(future)
        return future

    def slow_advance(self):
        time.sleep(watch["delay"])  # per check, every 4 tokens
        return advance(self)

    def recording_remove(self, keys):
        watch["dropped"].extend(keys)
        return remove(self, keys)

    monkeypatch.setattr(scheduler, "submit", recording_submit)
    monkeypatch.setattr(DecodeBatch, "advance", slow_advance)
    monkeypatch.setattr(DecodeBatch, "remove", recording_remove)
    return watch


def cancelled_in_the_engine(watch) -> None:
    """A T3 request of the job was cancelled, and the scheduler dropped it from its running batch before
    its token budget was spent."""
    wait_until(lambda: all(f.done() for f in watch["futures"]), what="the T3 requests to settle")
    assert any(f.cancelled() for f in watch["futures"])
    wait_until(lambda: watch["dropped"], what="the scheduler to drop the cancelled request")
    assert all(t.future.cancelled() and t.reported < t.request.max_new_tokens for t in watch["dropped"])


def open_stream(url: str, body: dict):
    """A streamed speech request whose first audio has arrived: (response, its byte iterator). Keep the
    iterator: a dropped one is closed by the garbage collector, which closes the connection."""
    client = httpx.Client(base_url=url, timeout=60)
    response = client.send(client.build_request("POST", "/v1/audio/speech", json=body), stream=True)
    assert response.status_code == 200, response.read()
    chunks = response.iter_bytes()
    assert next(chunks)
    return response, chunks


def wait_until(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_seeded_request_is_the_same_beside_seven_others(tmp_path):
    with LiveServer(options=ServerOptions(voices_dir=tmp_path)) as live:
        for name, seed in (("ada", 1), ("bo", 2)):
            answer = httpx.post(f"{live.url}/v1/audio/voices", data={"name": name}, timeout=60,
                                files={"file": ("clip.wav", clip_bytes(seed=seed), "audio/wav")})
            assert answer.status_code == 201, answer.text
        target = dict(input="The same words, with the same seed.", voice="ada", seed=42)
        alone = speak(live.url, **target)
        assert alone.status_code == 200
        others = [dict(input=f"Another text, number {i}.", voice=("bo", "default", "ada", "echo")[i % 4], seed=100 + i,
                       temperature=0.6 + 0.05 * i) for i in range(7)]
        results, spans = {}, {}
        barrier = threading.Barrier(8)

        def run(key, body):
            barrier.wait()
            start = time.perf_counter()
            results[key] = speak(live.url, **body)
            spans[key] = (start, time.perf_counter())

        threads = [threading.Thread(target=run, args=(k, b)) for k, b in [("target", target), *enumerate(others)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results.values())
        assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())  # all 8 ran at once
        assert results["target"].content == alone.content  # bit for bit
        assert not any(np.array_equal(pcm(results[i].content)[:2000], pcm(alone.content)[:2000]) for i in range(7))


def test_the_queue_bound_answers_429_only_past_it():
    with LiveServer(options=ServerOptions(max_queue=2, max_concurrency=1, retry_after_s=3)) as live:
        service = live.app.state.service
        body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm"}
        first, _chunks = open_stream(live.url, body)  # running, streaming
        second_status = []
        waiting = threading.Thread(target=lambda: second_status.append(
            httpx.post(f"{live.url}/v1/audio/speech", json={**body, "input": "Short.", "max_new_tokens": 12},
                       timeout=120).status_code))
        waiting.start()
        wait_until(lambda: service.admitted == 2, what="the second request to queue")
        refused = httpx.post(f"{live.url}/v1/audio/speech", json=body)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "queue_full"
        assert httpx.get(f"{live.url}/ready").status_code == 503
        assert live.metric("faster_chatterbox_queue_depth") == 1 and live.metric("faster_chatterbox_in_flight") == 1
        first.close()  # leaves: its place frees, the queued one runs
        waiting.join(timeout=60)
        assert second_status == [200]
        wait_until(lambda: service.admitted == 0, what="the queue to drain")
        assert httpx.get(f"{live.url}/ready").status_code == 200
        assert speak(live.url, input="Again.").status_code == 200
        assert live.metric("faster_chatterbox_rejected_total") == 1


def test_a_client_that_leaves_while_queued_frees_its_place_at_once():
    with LiveServer(options=ServerOptions(max_queue=4, max_concurrency=1)) as live:
        service = live.app.state.service
        body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm"}
        running, _chunks = open_stream(live.url, body)
        with pytest.raises(httpx.ReadTimeout):  # gives up while it waits for the only worker
            httpx.post(f"{live.url}/v1/audio/speech", json={**body, "input": "Queued."}, timeout=1.0)
        wait_until(lambda: service.admitted == 1, timeout=5, what="the queued request to be dropped")
        assert live.metric("faster_chatterbox_cancelled_total", reason="disconnect") == 1
        assert live.metric("faster_chatterbox_queue_depth") == 0 and live.metric("faster_chatterbox_in_flight") == 1
        running.close()


def test_the_request_timeout_cancels_waiting_and_streaming_requests(t3_watch):
    with LiveServer(options=ServerOptions(max_concurrency=1, request_timeout=3.0)) as live:
        body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm"}
        _response, chunks = open_stream(live.url, body)
        # T3 much slower for a while: the streaming job's worker (the only one) can't reach its next piece,
        # so the queued request surely still waits for it at its deadline
        t3_watch["delay"] = 0.5
        start = time.perf_counter()
        waited = httpx.post(f"{live.url}/v1/audio/speech", json={**body, "input": "Queued."}, timeout=30)
        t3_watch["delay"] = 0.05
        assert waited.status_code == 504 and waited.json()["error"]["code"] == "timeout", waited.text
        assert 2.5 < time.perf_counter() - start < 8
        with pytest.raises(httpx.RemoteProtocolError):  # audio had left: dropped mid-body, not a short file
            for _ in chunks:  # that looks whole
                pass
        wait_until(lambda: live.metric("faster_chatterbox_in_flight") == 0, what="the worker to stop")
        assert live.metric("faster_chatterbox_cancelled_total", reason="timeout") == 2
        cancelled_in_the_engine(t3_watch)  # the streaming one's decoding
        assert speak(live.url, input="Still here.").status_code == 200


def test_a_client_that_leaves_mid_stream_cancels_its_decoding(t3_watch):
    with LiveServer() as live:
        body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "mp3"}
        response, _chunks = open_stream(live.url, body)
        left = time.perf_counter()
        response.close()
        wait_until(lambda: live.metric("faster_chatterbox_in_flight") == 0, what="the worker to stop")
        assert time.perf_counter() - left < 10  # the whole text would take minutes
        assert live.metric("faster_chatterbox_cancelled_total", reason="disconnect") == 1
        cancelled_in_the_engine(t3_watch)
        assert live.metric("faster_chatterbox_audio_seconds_total") == 0  # it never finished
        assert speak(live.url, input="Next one.").status_code == 200
