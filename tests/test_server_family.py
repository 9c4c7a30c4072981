"""The server speaks any model of the family (`serve --model`): a Turbo server through the `openai` client,
the model names it accepts and refuses, each model's own controls (Flash's), and a multilingual server's
per-request `language`."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from server_helpers import SR, LiveServer, decode, family_tts

openai = pytest.importorskip("openai")
from faster_chatterbox.server.models import OPENAI_MODELS  # noqa: E402

EXTRA = {"seed": 3, "max_new_tokens": 20}  # random weights never stop: 20 tokens = 0.8 s of audio


def _live(model: str, tmp_path_factory):
    """A live server of `model`'s small random checkpoint (loaded as `serve` loads it), for the module."""
    cache = tmp_path_factory.mktemp("cache")
    tts = family_tts(model, cache)
    assert tts.settings.model == model and (cache / f"random-{model}-small-seed0").is_dir()
    with LiveServer(tts) as live:
        yield live
    tts.close()


@pytest.fixture(scope="module")
def turbo(tmp_path_factory):
    yield from _live("turbo", tmp_path_factory)


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    yield from _live("multilingual", tmp_path_factory)


@pytest.fixture(scope="module")
def flash(tmp_path_factory):
    yield from _live("flash", tmp_path_factory)


def _speak(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/speech", timeout=120,
                      json={"input": "Hello there.", "voice": "alloy", "response_format": "wav", **EXTRA, **body})


def _error(response: httpx.Response, param: str, code: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return error["message"]


@pytest.mark.parametrize("model", ["turbo", "tts-1"])
def test_turbo_server_speaks_through_the_openai_client(turbo, model):
    client = openai.OpenAI(base_url=f"{turbo.url}/v1", api_key="unused", max_retries=0)
    # cfg_weight and exaggeration: Turbo ignores them (with a warning, as upstream), the request succeeds
    data = client.audio.speech.create(model=model, voice="alloy", input="Hello from Turbo.", response_format="wav",
                                      extra_body={**EXTRA, "cfg_weight": 0.3, "exaggeration": 0.7}).read()
    audio, rate = decode(data)
    assert rate == SR and 0.5 < len(audio) / rate <= 20 * 960 / SR + 0.1 and np.abs(audio).max() > 0


def test_a_family_model_not_loaded_is_a_400_naming_the_loaded_one(turbo):
    for other in ("chatterbox", "multilingual", "nano"):
        message = _error(_speak(turbo, model=other), "model", "model_not_found")
        assert repr(other) in message and "'turbo'" in message
    _error(_speak(turbo, model="whisper-1"), "model", "model_not_found")
    message = _error(_speak(turbo, model="turbo", language="fr"), "language", "unsupported_language")
    assert "'fr'" in message
    assert _speak(turbo, model="turbo", language="EN").status_code == 200  # and the server keeps serving


def test_each_model_takes_its_own_controls_and_refuses_the_others_by_name(turbo, flash):
    assert _speak(flash, model="flash", num_steps=2, cfg_scale=1.5, temperature=0.7).status_code == 200
    for name, value in (("cfg_weight", 0.3), ("top_p", 0.9), ("min_p", 0.1), ("repetition_penalty", 1.3)):
        assert "flash" in _error(_speak(flash, model="flash", **{name: value}), name, "unsupported_parameter")
    _error(_speak(turbo, model="turbo", num_steps=2), "num_steps", "unsupported_parameter")
    parameters = httpx.get(f"{flash.url}/info").json()["parameters"]
    assert "cfg_scale" in parameters and "cfg_weight" not in parameters  # what the page shows


def test_models_health_and_info_name_the_loaded_model(turbo):
    ids = [m["id"] for m in httpx.get(f"{turbo.url}/v1/models").json()["data"]]
    assert ids == ["turbo", *OPENAI_MODELS]
    assert httpx.get(f"{turbo.url}/v1/models/chatterbox").status_code == 404
    assert httpx.get(f"{turbo.url}/health").json() == {"status": "ok", "model": "turbo"}
    info = httpx.get(f"{turbo.url}/info").json()
    assert info["model"] == "turbo" and info["languages"] == ["en"] and info["sample_rate"] == SR


def test_multilingual_server_speaks_the_requested_language(multilingual):
    french = _speak(multilingual, model="multilingual", language="fr")
    assert french.status_code == 200, french.text
    audio, rate = decode(french.content)
    assert rate == SR and len(audio) > 0
    english = _speak(multilingual, model="tts-1")  # default: en
    assert english.status_code == 200 and not np.array_equal(decode(english.content)[0], audio)
    regional = _speak(multilingual, model="multilingual", language="FR-fr")  # a regional tag speaks its language
    assert regional.status_code == 200 and np.array_equal(decode(regional.content)[0], audio)
    message = _error(_speak(multilingual, model="multilingual", language="xx"), "language", "unsupported_language")
    assert "'xx'" in message and "fr" in message
    info = httpx.get(f"{multilingual.url}/info").json()
    assert info["model"] == "multilingual" and {"en", "fr", "zh"} <= set(info["languages"])
    assert [m["id"] for m in httpx.get(f"{multilingual.url}/v1/models").json()["data"]][0] == "multilingual"
