"""The speech API through the official `openai` package, unchanged: every response format decoded back
and checked for rate and duration, streaming, SSE, the whole-file form, speed, models and voices."""

from __future__ import annotations

import base64
import io
import json
import time
import wave

import httpx
import numpy as np
import pytest

from server_helpers import SR, LiveServer, decode, pcm

openai = pytest.importorskip("openai")

TEXT = "Hello from the server."
SEED = 11
# Random weights never sample the stop token: each chunk runs to its token budget. A small cap keeps the
# audio short (30 tokens = 1.2 s) and the suite fast.
EXTRA = {"seed": SEED, "max_new_tokens": 30}


@pytest.fixture(scope="module")
def server():
    with LiveServer() as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(client) -> np.ndarray:
    """The seeded request's audio as raw pcm: what every other format must decode back to (in length)."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
                                      extra_body=EXTRA).read()
    assert len(data) % 2 == 0 and SR < len(data) <= 2 * 30 * 960  # 0.5 s to 30 tokens of 16-bit samples
    return pcm(data)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_decodes_back_at_24khz_with_the_same_duration(client, reference, fmt):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt,
                                      extra_body=EXTRA).read()
    audio, rate = decode(data)
    # Opus decoders always run at 48 kHz; the stream's own header says 24 kHz (checked in test_encode)
    assert rate == (48000 if fmt == "opus" else SR)
    seconds = len(audio) / rate
    # the codecs add a frame or two of padding (mp3 ~50 ms, aac ~40 ms), never lose audio
    assert abs(seconds - len(reference) / SR) < 0.12, (fmt, seconds, len(reference) / SR)
    assert np.abs(audio).max() > 0.01
    if fmt == "wav":  # lossless: the very samples of the pcm response (streamed header: length unknown)
        assert data[:4] == b"RIFF" and data[40:44] == b"\xff\xff\xff\xff"
        np.testing.assert_array_equal(pcm(data[44:]), reference)
    if fmt == "flac":
        np.testing.assert_allclose(audio, reference, atol=1 / 32768)


def test_default_format_is_mp3(client):
    data = client.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input="Hi there.",
                                      extra_body={"max_new_tokens": 20}).read()
    assert data[:3] == b"ID3" or data[0] == 0xFF  # an ID3 tag or an MPEG frame sync
    assert decode(data)[1] == SR


def test_streaming_response_sends_audio_as_it_is_made(client, reference):
    text = "The first sentence is spoken first. Then the second one follows it."
    start = time.perf_counter()
    arrivals, data = [], bytearray()
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text,
                                                            response_format="pcm",
                                                            extra_body={"seed": SEED, "max_new_tokens": 40}) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert "content-length" not in response.headers  # chunked: the length is not known up front
        for chunk in response.iter_bytes():
            arrivals.append(time.perf_counter() - start)
            data += chunk
    # the first audio (25 tokens of the first sentence) leaves long before the last (the second sentence's)
    assert len(arrivals) > 2 and arrivals[0] < 0.75 * arrivals[-1], arrivals
    assert 1.0 < len(pcm(bytes(data))) / SR <= 80 * 960 / SR  # two chunks of at most 40 tokens, edges trimmed


def test_whole_file_has_exact_wav_header_and_length(server, reference):
    response = httpx.post(f"{server.url}/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "wav", "stream": False, **EXTRA})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content) == 44 + 2 * len(reference)
    with wave.open(io.BytesIO(response.content)) as w:  # the stdlib reader trusts the sizes
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert w.getnframes() == len(reference)
        np.testing.assert_array_equal(pcm(w.readframes(w.getnframes())), reference)


def test_sse_events_carry_the_audio_and_usage(server, reference):
    events = []
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=60, json={
            "model": "gpt-4o-mini-tts", "voice": "alloy", "input": TEXT, "response_format": "pcm",
            "stream_format": "sse", **EXTRA}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done" and len(events) == len(deltas) + 1
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    np.testing.assert_array_equal(pcm(audio), reference)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(TEXT)  # the test tokenizer is character-level
    assert usage["output_tokens"] == round(len(reference) / SR * 25)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0])
def test_speed_stretches_the_duration(client, reference, speed):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=speed,
                                      extra_body=EXTRA).read()
    expected = len(reference) / SR / speed
    assert abs(len(pcm(data)) / SR - expected) < 0.05 * expected + 0.06, (speed, len(pcm(data)) / SR, expected)


def test_extras_and_voice_object_form(client, reference):
    same = client.audio.speech.create(model="chatterbox", voice={"id": "alloy"}, input=TEXT, response_format="pcm",
                                      extra_body=EXTRA).read()
    np.testing.assert_array_equal(pcm(same), reference)  # every OpenAI name is the built-in voice
    other = client.audio.speech.create(model="tts-1", voice="onyx", input=TEXT, response_format="pcm",
                                       instructions="Speak cheerfully.",  # accepted, unused
                                       extra_body={"seed": SEED, "exaggeration": 0.9, "cfg_weight": 0.3,
                                                   "temperature": 0.7, "top_p": 0.9, "min_p": 0.1,
                                                   "repetition_penalty": 1.3, "max_new_tokens": 30}).read()
    assert 0 < len(pcm(other)) <= 30 * 960 and not np.array_equal(pcm(other)[:1000], reference[:1000])


def test_models_and_voices_are_listed(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "chatterbox" and {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert client.models.retrieve("tts-1").id == "tts-1"
    voices = httpx.get(f"{server.url}/v1/audio/voices").json()["data"]
    names = {v["id"] for v in voices}
    assert {"default", "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
            "verse", "marin", "cedar"} <= names
    assert all(v["type"] == "builtin" for v in voices)


def test_health_ready_info_and_metrics(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": "chatterbox"}
    assert httpx.get(f"{server.url}/ready").json()["status"] == "ready"
    info = httpx.get(f"{server.url}/info").json()
    assert info["random_weights"] is True and info["sample_rate"] == SR and info["max_input_chars"] == 4096
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "faster-chatterbox" in page.text
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("faster_chatterbox_requests_total", "faster_chatterbox_queue_depth", "faster_chatterbox_in_flight",
                 "faster_chatterbox_time_to_first_audio_seconds_bucket", "faster_chatterbox_real_time_factor_bucket",
                 "faster_chatterbox_audio_seconds_total"):
        assert name in text
    assert server.metric("faster_chatterbox_audio_seconds_total") > 1.0
    assert server.metric("faster_chatterbox_requests_total", route="/v1/audio/speech", status="200") >= 1
    assert server.metric("faster_chatterbox_time_to_first_audio_seconds_count") >= 1
