"""Every client mistake is a clear 4xx in OpenAI's error shape, nothing is stored, and the server goes on
serving: bad bodies, keys, uploads and names; an internal failure is a 500 without a trace; CORS and body
limits."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.server import ServerOptions
from server_helpers import LiveServer, clip_bytes, pcm, small_tts

openai = pytest.importorskip("openai")

GOOD = {"model": "tts-1", "input": "Hello.", "voice": "alloy", "response_format": "pcm", "max_new_tokens": 12}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def server(library):
    options = ServerOptions(voices_dir=library, max_input_chars=200, max_upload_bytes=400_000)
    with LiveServer(options=options) as live:
        yield live


def error_of(response: httpx.Response, status: int, param=None, code=None) -> str:
    """The message of an OpenAI-shaped error answer, after checking its shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and isinstance(body["error"]["type"], str)
    assert "Traceback" not in response.text and 'File "' not in response.text
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def still_serving(server) -> None:
    response = httpx.post(f"{server.url}/v1/audio/speech", json=GOOD, timeout=60)
    assert response.status_code == 200 and len(response.content) > 0


@pytest.mark.parametrize("change,param,code", [
    ({"input": ""}, "input", "empty_input"),
    ({"input": " \n\t "}, "input", "empty_input"),
    ({"input": "x" * 201}, "input", "string_above_max_length"),
    ({"voice": "nobody"}, "voice", "voice_not_found"),
    ({"voice": "../../etc/passwd"}, "voice", "voice_not_found"),  # a name, never a path
    ({"voice": {"id": "nobody"}}, "voice", "voice_not_found"),
    ({"model": "tts-2"}, "model", "model_not_found"),
    ({"response_format": "ogg"}, "response_format", None),
    ({"speed": 0.1}, "speed", None),
    ({"speed": 4.5}, "speed", None),
    ({"speed": "fast"}, "speed", None),
    ({"stream_format": "chunks"}, "stream_format", None),
    ({"temperature": 0}, "temperature", None),
    ({"temperature": 5e-324}, "temperature", None),  # would be NaN in T3's batch, failing its other requests
    ({"repetition_penalty": 1e-300}, "repetition_penalty", None),
    ({"seed": -1}, "seed", None),
    ({"top_p": 2}, "top_p", None),
    ({"max_new_tokens": 0}, "max_new_tokens", None),
    ({"cfg_wieght": 0.3}, "cfg_wieght", "unknown_parameter"),
    ({"input": None}, "input", None),
])
def test_bad_speech_requests_are_400(server, change, param, code):
    body = {**GOOD, **change}
    error_of(httpx.post(f"{server.url}/v1/audio/speech", json=body), 400, param, code)


def test_missing_fields_malformed_json_and_non_objects_are_400(server):
    url = f"{server.url}/v1/audio/speech"
    for field in ("model", "input", "voice"):
        body = {k: v for k, v in GOOD.items() if k != field}
        error_of(httpx.post(url, json=body), 400, field, "missing_required_parameter")
    error_of(httpx.post(url, content=b'{"model": "tts-1", "input": ', headers={"Content-Type": "application/json"}),
             400, code="invalid_json")
    error_of(httpx.post(url, json=["tts-1", "Hello."]), 400)
    error_of(httpx.post(url, content=b"model=tts-1", headers={"Content-Type": "text/plain"}), 400)
    error_of(httpx.get(url), 405)
    error_of(httpx.get(f"{server.url}/v1/nothing"), 404)
    still_serving(server)


def test_text_the_engine_refuses_is_a_400_naming_it(server):
    message = error_of(httpx.post(f"{server.url}/v1/audio/speech", json={**GOOD, "input": "..."}), 400)
    assert "speak" in message  # the engine's own words: nothing to speak
    still_serving(server)


def test_the_openai_client_sees_the_errors(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
    assert caught.value.status_code == 400 and caught.value.body["param"] == "voice"


def test_a_body_over_the_limit_is_413(server):
    big = {**GOOD, "instructions": "x" * (2**20 + 10)}
    error_of(httpx.post(f"{server.url}/v1/audio/speech", json=big), 413)
    still_serving(server)


def upload(server, name, data: bytes, filename="clip.wav", **form):
    return httpx.post(f"{server.url}/v1/audio/voices", data={"name": name, **form},
                      files={"file": (filename, data, "application/octet-stream")}, timeout=60)


def silent_wav(seconds=3.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 16000), np.float32), 16000, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize("name,data,status,code", [
    ("empty", b"", 400, "invalid_audio"),
    ("text", b"this is not audio at all " * 40, 400, "invalid_audio"),
    ("silent", silent_wav(), 400, "invalid_audio"),
    ("short", clip_bytes(seconds=0.3), 400, "invalid_audio"),
    ("huge", clip_bytes(seconds=14.0), 413, None),  # 448 kB of 16-bit wav over the 400 kB limit
    ("../evil", clip_bytes(), 400, "invalid_voice_name"),
    ("a/b", clip_bytes(), 400, "invalid_voice_name"),
    (".hidden", clip_bytes(), 400, "invalid_voice_name"),
    ("", clip_bytes(), 400, None),
    ("x" * 65, clip_bytes(), 400, "invalid_voice_name"),
])
def test_bad_uploads_store_nothing(server, library, name, data, status, code):
    error_of(upload(server, name, data), status, code=code)
    assert not any(library.iterdir()), list(library.iterdir())
    assert all(v["type"] == "builtin" for v in httpx.get(f"{server.url}/v1/audio/voices").json()["data"])


def test_upload_use_replace_and_delete_a_voice(server, library):
    mp3 = io.BytesIO()
    sf.write(mp3, synthetic_voice(4.0, 24000, seed=3), 24000, format="MP3")
    created = upload(server, "alloy", mp3.getvalue(), filename="clip.mp3")  # any format FFmpeg reads
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "alloy" and 3.5 < created.json()["seconds"] <= 4.5
    voices = {v["id"]: v["type"] for v in httpx.get(f"{server.url}/v1/audio/voices").json()["data"]}
    assert voices["alloy"] == "custom" and voices["default"] == "builtin"
    [stored] = [p.name for p in library.iterdir() if p.is_file()]
    assert stored == "alloy.wav"
    # the library's "alloy" now speaks instead of the built-in voice
    speak = lambda voice: pcm(httpx.post(f"{server.url}/v1/audio/speech", timeout=60,  # noqa: E731
                                         json={**GOOD, "voice": voice, "seed": 4}).content)
    assert not np.array_equal(speak("alloy"), speak("default"))
    error_of(upload(server, "alloy", clip_bytes(seed=5)), 409, "name", "voice_exists")
    assert upload(server, "alloy", clip_bytes(seed=5), overwrite="true").status_code == 201
    deleted = httpx.delete(f"{server.url}/v1/audio/voices/alloy")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    error_of(httpx.delete(f"{server.url}/v1/audio/voices/alloy"), 404, code="voice_not_found")
    assert not [p for p in library.iterdir() if p.is_file()]
    error_of(httpx.delete(f"{server.url}/v1/audio/voices/..%2F..%2Fetc"), 404)  # never a path
    error_of(httpx.delete(f"{server.url}/v1/audio/voices/.hidden"), 400, code="invalid_voice_name")
    still_serving(server)


def test_an_internal_failure_is_a_500_without_details(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")
        yield  # a generator, as generate_stream

    monkeypatch.setattr(server.tts, "generate_stream", broken)
    message = error_of(httpx.post(f"{server.url}/v1/audio/speech", json=GOOD), 500, code="synthesis_failed")
    assert "secret" not in message
    monkeypatch.undo()
    still_serving(server)


def test_api_key():
    with LiveServer(options=ServerOptions(api_key="s3cret-key")) as live:
        url = f"{live.url}/v1/audio/speech"
        error_of(httpx.post(url, json=GOOD), 401, code="missing_api_key")
        error_of(httpx.post(url, json=GOOD, headers={"Authorization": "Bearer wrong"}), 401, code="invalid_api_key")
        error_of(httpx.post(url, json=GOOD, headers={"Authorization": "Basic czNjcmV0LWtleQ=="}), 401)
        for path in ("/v1/models", "/v1/audio/voices", "/metrics"):
            error_of(httpx.get(f"{live.url}{path}"), 401)
        assert httpx.get(f"{live.url}/health").status_code == 200  # probes need no key
        assert httpx.get(f"{live.url}/ready").status_code == 200
        assert httpx.get(f"{live.url}/info").json()["auth_required"] is True
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0).audio.speech.create(
                model="tts-1", voice="alloy", input="Hello.")
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="s3cret-key", max_retries=0)
        audio = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="pcm",
                                           extra_body={"max_new_tokens": 12}).read()
        assert 0 < len(audio) <= 2 * 12 * 960


def test_cors_only_when_asked(server):
    preflight = {"Origin": "http://page.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    assert "access-control-allow-origin" not in httpx.options(f"{server.url}/v1/audio/speech", headers=preflight).headers
    with LiveServer(small_tts(), ServerOptions(cors_origins=("http://page.test",))) as live:
        answer = httpx.options(f"{live.url}/v1/audio/speech", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://page.test"
        other = httpx.options(f"{live.url}/v1/audio/speech", headers={**preflight, "Origin": "http://evil.test"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.test"
