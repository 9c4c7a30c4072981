"""Wyoming (Home Assistant) beside the HTTP API, spoken to with the wyoming package's own client over
loopback: describe lists the voices; synthesize streams audio-start, audio-chunks, audio-stop."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from faster_chatterbox.server import ServerOptions
from server_helpers import SR, LiveServer, family_tts, free_port

pytest.importorskip("wyoming")
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import Synthesize, SynthesizeVoice  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    options = ServerOptions(wyoming_port=port, voices_dir=tmp_path_factory.mktemp("voices"))
    with LiveServer(options=options) as live:
        live.wyoming_port = port
        yield live


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    tts = family_tts("multilingual", tmp_path_factory.mktemp("cache"))
    port = free_port()
    with LiveServer(tts, ServerOptions(wyoming_port=port)) as live:
        live.wyoming_port = port
        yield live
    tts.close()


async def exchange(port: int, request, until) -> list:
    """Send one event and read events until `until(event)` holds; returns them all."""
    events = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(request.event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout=60)
            assert event is not None, "the server closed the connection"
            events.append(event)
            if until(event):
                return events


def test_describe_lists_the_voices(server):
    [event] = asyncio.run(exchange(server.wyoming_port, Describe(), lambda e: True))
    assert Info.is_type(event.type)
    [program] = Info.from_event(event).tts
    assert program.name == "faster-chatterbox" and program.installed
    assert "RANDOM WEIGHTS" in program.description  # said wherever the server describes itself
    names = {voice.name for voice in program.voices}
    assert {"default", "alloy", "nova"} <= names and all(v.languages == ["en"] for v in program.voices)


def test_synthesize_streams_audio(server):
    request = Synthesize(text="Hello from Wyoming.",
                         voice=SynthesizeVoice(name="alloy"))
    events = asyncio.run(exchange(server.wyoming_port, request,
                                  lambda e: AudioStop.is_type(e.type) or Error.is_type(e.type)))
    assert AudioStart.is_type(events[0].type) and AudioStop.is_type(events[-1].type), [e.type for e in events]
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (SR, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert len(chunks) >= 2 and all(AudioChunk.is_type(e.type) for e in events[1:-1])  # streamed, piece by piece
    seconds = sum(len(c.audio) for c in chunks) / 2 / SR
    assert seconds > 1.0 and all(c.rate == SR for c in chunks)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "faster_chatterbox_audio_seconds_total" in metrics  # shares the HTTP side's service and metrics


@pytest.mark.parametrize("request_,code", [
    (Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")), "voice_not_found"),
    (Synthesize(text="   "), "empty_input"),
    (Synthesize(text="Hallo.", voice=SynthesizeVoice(language="de_DE")), "unsupported_language"),
])
def test_bad_requests_are_error_events(server, request_, code):
    [event] = asyncio.run(exchange(server.wyoming_port, request_, lambda e: True))
    assert Error.is_type(event.type) and Error.from_event(event).code == code


def _spoken(port: int, request) -> tuple[list, bytes]:
    """The event types of one synthesize and its audio bytes."""
    events = asyncio.run(exchange(port, request, lambda e: AudioStop.is_type(e.type) or Error.is_type(e.type)))
    audio = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return [e.type for e in events], audio


def test_a_multilingual_server_speaks_home_assistants_language(multilingual):
    """Home Assistant sends the pipeline's language as a regional tag ("fr_FR") when no voice is picked (the
    protocol carries a voice's name or its language, not both): the multilingual server speaks it in the
    default voice, describes its 23 languages, and answers a language it lacks with an error event."""
    [event] = asyncio.run(exchange(multilingual.wyoming_port, Describe(), lambda e: True))
    [program] = Info.from_event(event).tts
    assert all({"en", "fr", "zh"} <= set(v.languages) and len(v.languages) == 23 for v in program.voices)
    french_types, french = _spoken(multilingual.wyoming_port, Synthesize(
        text="Bonjour.", voice=SynthesizeVoice(language="fr_FR")))
    assert french_types[0] == "audio-start" and french_types[-1] == "audio-stop" and len(french) > 0
    _, english = _spoken(multilingual.wyoming_port, Synthesize(text="Bonjour."))
    assert english != french  # English by default: another language tag, other tokens
    [event] = asyncio.run(exchange(multilingual.wyoming_port, Synthesize(
        text="Hello.", voice=SynthesizeVoice(language="xx_YY")), lambda e: True))
    error = Error.from_event(event)
    assert error.code == "unsupported_language" and "'xx_YY'" in error.text
