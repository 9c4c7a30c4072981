"""The FastAPI app: `create_app(tts, options)` serves a loaded model of the family (server/models.py).

  POST /v1/audio/speech            OpenAI's speech API (speech.py)
  GET|POST /v1/audio/voices, DELETE /v1/audio/voices/{name}   the voices (voices_api.py)
  GET /v1/models                   OpenAI's model list: the loaded model's name and OpenAI's mapped to it
  GET /health, /ready              liveness (always 200; names the loaded model) and readiness (503 while
                                   the queue is full or the server is shutting down); no key needed
  GET /info                        what the page shows: model, its languages, preset, device, random
                                   weights, limits
  GET /metrics                     Prometheus
  GET /                            the web page (static/, plain HTML and JS)
The model is shared by every request; the app owns the SpeechService (admission and worker threads),
and the Wyoming server when `options.wyoming_port` is set. It never closes the model: its owner does.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .auth import require_api_key
from .catalog import VoiceCatalog
from .encode import FORMATS, MAX_SPEED, MIN_SPEED
from .errors import APIError, install_error_handlers
from .metrics import Metrics
from .middleware import BodyLimit, RequestLog
from .options import ServerOptions
from .models import accepted_models, extras_taken, languages, model_name
from .service import SpeechService
from .speech import router as speech_router
from .voices_api import router as voices_router

log = logging.getLogger("faster_chatterbox.server")
STATIC = files("faster_chatterbox.server") / "static"
_CREATED = int(time.time())


def create_app(tts, options: ServerOptions | None = None) -> FastAPI:
    options = options or ServerOptions()
    options = replace(options, random_weights=options.random_weights or bool(getattr(tts, "random_weights", False)))
    # the model's library too (tts.voices): its callers may then name these voices as the server's clients do
    library = tts.use_voice_library(options.voices_dir) if options.voices_dir is not None else None
    catalog = VoiceCatalog(tts.conds, library)
    metrics = Metrics()
    concurrency = options.max_concurrency or tts.settings.max_batch
    service = SpeechService(tts, catalog, metrics, max_queue=options.max_queue, max_concurrency=concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        wyoming = None
        if options.wyoming_port is not None:
            from .wyoming import start_wyoming

            wyoming = await start_wyoming(app, options.wyoming_host, options.wyoming_port)
        try:
            yield
        finally:
            if wyoming is not None:
                await wyoming.stop()
            service.close()

    app = FastAPI(title="faster-chatterbox", version=__version__, lifespan=lifespan,
                  description="Chatterbox text-to-speech with OpenAI's speech API" +
                              (" (RANDOM WEIGHTS: the audio is noise)" if options.random_weights else ""))
    app.state.tts, app.state.options, app.state.catalog = tts, options, catalog
    app.state.metrics, app.state.service = metrics, service
    install_error_handlers(app)
    app.include_router(speech_router)
    app.include_router(voices_router)
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    # outermost last: the log sees every answer, CORS answers preflights, bodies are bounded innermost
    app.add_middleware(BodyLimit, default=options.max_body_bytes,
                       limits={"/v1/audio/voices": options.max_upload_bytes + 64 * 1024})
    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-Request-ID"])
    app.add_middleware(RequestLog, metrics=metrics)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", summary="Liveness")
    async def health(request: Request) -> dict:
        return {"status": "ok", "model": model_name(request.app.state.tts)}

    @app.get("/ready", summary="Readiness: 503 while the queue is full or the server is closing")
    async def ready(request: Request):
        service: SpeechService = request.app.state.service
        if service.closed:
            return JSONResponse({"status": "closing"}, status_code=503)
        if service.full:
            return JSONResponse({"status": "busy", "queued": service.admitted}, status_code=503)
        return {"status": "ready", "queued": service.admitted}

    @app.get("/info", summary="The model and limits (what the web page shows)")
    async def info(request: Request) -> dict:
        state = request.app.state
        tts, options = state.tts, state.options
        return {"model": model_name(tts), "languages": list(languages(tts)), "parameters": list(extras_taken(tts)),
                "version": __version__, "preset": tts.settings.preset, "device": str(tts.device),
                "sample_rate": tts.sr, "random_weights": options.random_weights,
                "max_input_chars": options.max_input_chars, "formats": list(FORMATS),
                "speed": [MIN_SPEED, MAX_SPEED], "auth_required": bool(options.api_key),
                "voice_uploads": state.catalog.library is not None, "max_upload_bytes": options.max_upload_bytes}

    @app.get("/v1/models", dependencies=[Depends(require_api_key)], summary="OpenAI's model list")
    async def models(request: Request) -> dict:
        return {"object": "list", "data": [_model(name) for name in accepted_models(request.app.state.tts)]}

    @app.get("/v1/models/{model}", dependencies=[Depends(require_api_key)], summary="One model")
    async def model(model: str, request: Request) -> dict:
        if model not in accepted_models(request.app.state.tts):
            raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
        return _model(model)

    @app.get("/metrics", dependencies=[Depends(require_api_key)], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        m: Metrics = request.app.state.metrics
        return Response(m.render(), media_type=m.CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "faster-chatterbox"}
