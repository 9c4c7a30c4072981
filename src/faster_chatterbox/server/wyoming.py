"""Wyoming (Home Assistant's voice protocol, PyPI `wyoming`) beside the HTTP API, on the same event loop
and the same SpeechService (the same queue bound, workers and timeout).

  describe    -> info: one TTS program, its voices (the built-in names and the library's), each with the
                 loaded model's languages (English; Multilingual's 23)
  synthesize  -> audio-start (24 kHz, 16-bit, mono), audio-chunk per piece as it is made, audio-stop, in
                 the requested language when the request names one instead of a voice (Home Assistant
                 sends its pipeline's, e.g. "fr_FR": French, in the default voice);
                 a problem (unknown voice or language, empty or long text, a full queue) is an `error` event
A client that disconnects mid-stream cancels its job as an HTTP client does.
"""

from __future__ import annotations

import logging
import time

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize

from .. import __version__
from .errors import APIError, job_error
from .models import language_args, languages
from .schema import DEFAULT_VOICE
from .service import QueueFull, SpeechJob, SpeechService

log = logging.getLogger("faster_chatterbox.server")
_ATTRIBUTION = Attribution(name="Resemble AI (Chatterbox); faster-chatterbox",
                           url="https://github.com/resemble-ai/chatterbox")


async def start_wyoming(app, host: str, port: int) -> AsyncTcpServer:
    """Start serving Wyoming on host:port (returns the server; `await server.stop()` ends it)."""
    server = AsyncTcpServer(host, port)
    await server.start(lambda reader, writer: _Handler(reader, writer, app.state))
    log.info("Wyoming TTS on tcp://%s:%d", host, port)
    return server


def info(state) -> Info:
    random = " (RANDOM WEIGHTS: noise)" if state.options.random_weights else ""
    voices = [TtsVoice(name=name, attribution=_ATTRIBUTION, installed=True, version=__version__, languages=list(languages(state.tts)),
                       description=f"{name}{random}") for name in state.catalog.names()
              if name in state.catalog.library_names() or state.catalog.builtin is not None]
    program = TtsProgram(name="faster-chatterbox", attribution=_ATTRIBUTION, installed=True, version=__version__,
                         description=f"Chatterbox text-to-speech{random}", voices=voices)
    return Info(tts=[program])


class _Handler(AsyncEventHandler):
    def __init__(self, reader, writer, state):
        super().__init__(reader, writer)
        self.state = state

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(info(self.state).event())
        elif Synthesize.is_type(event.type):
            await self._synthesize(Synthesize.from_event(event))
        return True

    async def _synthesize(self, request: Synthesize) -> None:
        state, service = self.state, self.state.service
        service: SpeechService
        try:
            voice = state.catalog.check(request.voice.name if request.voice and request.voice.name else DEFAULT_VOICE)
            text = request.text or ""
            if not text.strip():
                raise APIError(400, "the text is empty", code="empty_input")
            if len(text) > state.options.max_input_chars:
                raise APIError(400, f"the text is {len(text)} characters long; at most "
                                    f"{state.options.max_input_chars} are allowed", code="string_above_max_length")
            # a voice's name or, without one, a language (Home Assistant's pipeline language, e.g. "fr_FR")
            language = request.voice.language if request.voice else None
            running = service.submit(SpeechJob(text, voice, language_args(state.tts, language), "pcm"))
        except QueueFull:
            await self.write_event(Error(text="the server is busy: retry later", code="queue_full").event())
            return
        except APIError as exc:
            await self.write_event(Error(text=exc.message, code=exc.code).event())
            return
        deadline = time.perf_counter() + state.options.request_timeout
        rate, started = state.tts.sr, False
        try:
            while True:
                try:
                    kind, value = await running.next(deadline)
                except TimeoutError:
                    service.cancel(running, "timeout")
                    await self.write_event(Error(text="the request timeout passed", code="timeout").event())
                    return
                if kind == "error":
                    problem = job_error(value)
                    await self.write_event(Error(text=problem.message, code=problem.code).event())
                    return
                if not started:  # audio-start once the first audio exists (or at the end, for none)
                    await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                    started = True
                if kind == "done":
                    await self.write_event(AudioStop().event())
                    return
                await self.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=value).event())
        finally:
            if not running.finished:  # the client went away (or the handler was stopped)
                service.cancel(running, "disconnect")
