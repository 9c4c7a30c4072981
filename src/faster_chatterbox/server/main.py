"""`faster-chatterbox serve`: load and warm the model, then serve until SIGTERM (or Ctrl-C).

The port opens only once the model is loaded and has spoken one short sentence, so a load balancer never
sees a half-ready server. SIGTERM drains: uvicorn stops accepting, lets in-flight requests (streams
included) finish, runs the app's shutdown (the workers end, Wyoming stops), and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import uvicorn

from ..family import cache_dir, random_checkpoint
from ..family import load_model as load_model_named
from ..pipeline import NoSpeechError
from .app import create_app
from .models import language_args
from .options import ServerOptions

log = logging.getLogger("faster_chatterbox.server")
API_KEY_ENV = "FASTER_CHATTERBOX_API_KEY"


def load_model(args):
    """The model `serve` (or a Ray replica) was asked for: --model from --checkpoint, --repo-id or random
    weights of its layout (family.py: the loader `speak` uses too)."""
    model = args.model
    checkpoint = random_checkpoint(args.random_weights, model) if args.random_weights else args.checkpoint
    return load_model_named(model, checkpoint, args.repo_id, device=args.device, preset=args.preset,
                            watermark=not args.no_watermark)


def warm_up(tts) -> float:
    """One short synthesis (first calls build kernels and caches); returns its seconds."""
    start = time.perf_counter()
    try:
        for _ in tts.generate_stream("Hello, this is a warm up.", seed=0, max_new_tokens=50, **language_args(tts)):
            pass
    except NoSpeechError:  # real weights may say nothing to this; the model is warm all the same
        pass
    return time.perf_counter() - start


def server_options(args, random_weights: bool) -> ServerOptions:
    voices = None if args.voices_dir == "none" else Path(args.voices_dir or cache_dir() / "voices").expanduser()
    return ServerOptions(max_input_chars=args.max_input_chars, max_queue=args.max_queue,
                         max_concurrency=args.max_concurrency, request_timeout=args.request_timeout,
                         api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                         cors_origins=tuple(args.cors_origin or ()), voices_dir=voices,
                         wyoming_port=args.wyoming_port, wyoming_host=args.host, random_weights=random_weights)


def serve(args) -> None:
    logging.getLogger("faster_chatterbox.server").setLevel(logging.INFO)
    if args.max_input_chars < 1 or args.max_queue < 1 or args.request_timeout <= 0 or (
            args.max_concurrency is not None and args.max_concurrency < 1):
        raise ValueError("--max-input-chars, --max-queue and --max-concurrency must be at least 1, "
                         "--request-timeout above 0")
    tts = load_model(args)
    try:
        if tts.random_weights:
            log.warning("*** RANDOM WEIGHTS: this server speaks noise (for tests and benchmarks only) ***")
        log.info("model %s loaded (preset %s on %s); warmed up in %.1f s", tts.settings.model, tts.settings.preset,
                 tts.device, warm_up(tts))
        options = server_options(args, tts.random_weights)
        if options.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s without an API key: anyone who reaches the port can use it", args.host)
        app = create_app(tts, options)
        config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="info",
                                timeout_graceful_shutdown=args.request_timeout)
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal it drained on once it is done: let that SIGTERM end us with 0
        signal.signal(signal.SIGTERM, lambda *_: None)
        log.info("serving http://%s:%d%s", args.host, args.port,
                 f" and Wyoming on tcp://{args.host}:{args.wyoming_port}" if args.wyoming_port else "")
        server.run()
        if not server.started:
            raise OSError(f"could not serve on {args.host}:{args.port}")
    finally:
        tts.close()
    print("server stopped", file=sys.stderr)
