"""POST /v1/audio/speech: OpenAI's speech endpoint over the shared SpeechService.

The response's status is decided by the job's first item (its first audio, or its error), so a bad
argument the engine finds is still a 400, and a request that reaches its deadline before any audio is a
504; from then on the bytes stream as they are made. Three shapes:
  stream_format "audio" (default)  the encoded bytes, chunked, as made (a streamed WAV's header says the
                                   length is unknown, as OpenAI's does)
  stream_format "sse"              `speech.audio.delta` events (base64 audio), then `speech.audio.done`
                                   with usage {input_tokens, output_tokens, total_tokens}
  "stream": false (an extra)       one whole file with Content-Length (exact WAV header)
A client that leaves, or a deadline that passes, cancels the job: its worker closes the generator,
which cancels its T3 decoding.
"""

from __future__ import annotations

import base64
import json
import logging
import time

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from .auth import require_api_key
from .encode import MEDIA_TYPES
from .errors import APIError, bad_request, job_error
from .models import check_extras, language_args, model_defaults
from .schema import SpeechRequest
from .service import QueueFull, Running, SpeechJob, SpeechService

log = logging.getLogger("faster_chatterbox.server")
router = APIRouter(dependencies=[Depends(require_api_key)])
_POLL_S = 0.2  # how often a request waiting for its audio checks that its client is still there


class _ClientGone(Exception):
    pass


@router.post("/v1/audio/speech", response_class=Response, summary="Speak a text (OpenAI-compatible)",
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()} | {"text/event-stream": {}}},
                        400: {"description": "a bad request, in OpenAI's error shape"},
                        429: {"description": "the queue is full; see Retry-After"},
                        504: {"description": "no audio before the request timeout"}})
async def speech(body: SpeechRequest, request: Request):
    app = request.app.state
    service: SpeechService = app.service
    options = app.options
    job = _job(body, app)
    request.state.speech = {"voice": job.voice, "chars": len(job.text), "format": job.fmt}
    deadline = time.perf_counter() + options.request_timeout
    try:
        running = service.submit(job)
    except QueueFull:
        raise APIError(429, f"the server is busy ({service.max_queue} requests queued or running): retry later",
                       code="queue_full", headers={"Retry-After": str(options.retry_after_s)}) from None
    try:
        first = await _next(service, running, request, deadline, waiting=True)
        if body.stream_format == "sse":
            return _JobResponse(_sse(service, running, first, deadline, request), service, running,
                                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if job.whole:
            data = [first]
            while data[-1][0] == "audio":
                data.append(await _next(service, running, request, deadline))
            _done(request, running)
            return Response(b"".join(v for k, v in data if k == "audio"), media_type=MEDIA_TYPES[job.fmt])
        return _JobResponse(_audio(service, running, first, deadline, request), service, running,
                            media_type=MEDIA_TYPES[job.fmt])
    except _ClientGone:
        return Response(status_code=499)  # nginx's "client closed request": for the log, nobody reads it
    except BaseException:
        service.cancel(running, "error")
        raise


def _job(body: SpeechRequest, app) -> SpeechJob:
    """The request's job, checked: every client mistake is a 400 naming its parameter."""
    defaults = model_defaults(app.tts, body.model)
    language = language_args(app.tts, body.language)
    text = body.input
    if not text.strip():
        raise bad_request("input is empty: give some text to speak", "input", "empty_input")
    if len(text) > app.options.max_input_chars:
        raise bad_request(f"input is {len(text)} characters long; at most {app.options.max_input_chars} are "
                          "allowed", "input", "string_above_max_length")
    voice = app.catalog.check(body.voice_name())
    whole = not body.stream and body.stream_format == "audio"
    extras = body.extras(defaults)
    check_extras(app.tts, extras)
    return SpeechJob(text, voice, extras | language, body.response_format, body.speed, whole=whole)


async def _next(service: SpeechService, running: Running, request: Request, deadline: float, *,
                waiting: bool = False) -> tuple[str, object]:
    """The job's next item before the response starts; errors become their HTTP answers."""
    while True:
        try:
            kind, value = await running.next(min(deadline, time.perf_counter() + _POLL_S))
            break
        except TimeoutError:
            if time.perf_counter() >= deadline:
                service.cancel(running, "timeout")
                raise APIError(504, f"no audio within the request timeout ({request.app.state.options.request_timeout:g} s)"
                               + ("; the request waited for a worker" if waiting and running.started is None
                                  else ""), code="timeout") from None
            if await request.is_disconnected():
                service.cancel(running, "disconnect")
                request.state.speech["outcome"] = "disconnect"
                raise _ClientGone from None
    if kind == "error":
        raise job_error(value)
    return kind, value


def _done(request: Request, running: Running) -> None:
    """A finished job's log fields (its metrics were recorded by its worker)."""
    outcome = running.outcome
    request.state.speech.update(outcome="complete", audio_s=round(outcome.audio_seconds, 3),
                                ttfa_s=None if outcome.first_audio_s is None else round(outcome.first_audio_s, 3),
                                synth_s=round(outcome.synth_s, 3))


async def _audio(service, running: Running, first, deadline: float, request: Request):
    kind, value = first
    try:
        while kind == "audio":
            yield value
            try:
                kind, value = await running.next(deadline)
            except TimeoutError:
                service.cancel(running, "timeout")
                request.state.speech["outcome"] = "timeout"
                raise _StreamAborted("request timeout mid-stream") from None
        if kind == "error":
            request.state.speech["outcome"] = "error"
            log.error("speech job failed mid-stream", exc_info=value)
            raise _StreamAborted("synthesis failed mid-stream")
        _done(request, running)
    finally:
        if not running.finished:  # the client left (the response was cancelled)
            service.cancel(running, "disconnect")
            request.state.speech.setdefault("outcome", "disconnect")


async def _sse(service, running: Running, first, deadline: float, request: Request):
    """OpenAI's speech events; an error after the start is an `error` event (SSE can say so)."""
    kind, value = first
    try:
        while kind == "audio":
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(value).decode()})
            try:
                kind, value = await running.next(deadline)
            except TimeoutError:
                service.cancel(running, "timeout")
                request.state.speech["outcome"] = "timeout"
                kind, value = "error", APIError(504, "the request timeout passed mid-stream", code="timeout")
        if kind == "error":
            request.state.speech.setdefault("outcome", "error")
            yield _event({"type": "error", **job_error(value).body()})
            return
        _done(request, running)
        usage = {"input_tokens": value.input_tokens, "output_tokens": value.output_tokens,
                 "total_tokens": value.input_tokens + value.output_tokens}
        yield _event({"type": "speech.audio.done", "usage": usage})
    finally:
        if not running.finished:
            service.cancel(running, "disconnect")
            request.state.speech.setdefault("outcome", "disconnect")


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class _StreamAborted(Exception):
    """Raised from a streamed body: the response is left incomplete (no final chunk) and uvicorn drops
    the connection, so the client sees a failed transfer rather than a short file that looks whole."""


class _JobResponse(StreamingResponse):
    """A StreamingResponse that listens for the client leaving while it waits for audio (not only when a
    send fails), so a gone client's job is cancelled at once, and that always closes its body."""

    def __init__(self, body, service: SpeechService, running: Running, **kwargs):
        super().__init__(body, **kwargs)
        self.service, self.running = service, running

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as group:
                async def stream():
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away mid-send
                        pass
                    except _StreamAborted as exc:
                        log.warning("request %s: %s; dropping the connection",
                                    scope.get("state", {}).get("request_id", "?"), exc)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()  # the client left: cancelling the body cancels the job
        finally:
            await self.body_iterator.aclose()
            if not self.running.finished:
                self.service.cancel(self.running, "disconnect")
