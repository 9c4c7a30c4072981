"""The same OpenAI-compatible app on Ray Serve: N replicas behind one endpoint, each holding one model
(extra: pip install 'faster-chatterbox[ray]').

    faster-chatterbox serve --ray --replicas 2 --random-weights small          # a local Ray cluster
    faster-chatterbox serve --ray --min-replicas 1 --max-replicas 8 --ray-address auto --num-gpus 1
    serve run faster_chatterbox.server.ray_serve:app_builder checkpoint=/models/cb replicas=2  # or a YAML
                                                                          # config: docs/ray-serve.yaml

Each replica is a Serve deployment replica (one Ray actor) that loads and warms its model on its device in
its constructor, then builds the app with `create_app` (app.py, unchanged: routes, errors, streaming,
SSE, voices, metrics) and serves it through `@serve.ingress`; Serve's proxy streams the ASGI responses
through, chunk by chunk. Every response carries `X-Replica`, the replica that answered.

Scaling: a fixed `replicas`, or Serve's autoscaler between `min_replicas` and `max_replicas` on ongoing
requests per replica (queued at the proxy and handles plus running), targeting the model's batch (the
requests one replica decodes together: `max_concurrency`, default the T3 batch size). A replica admits
twice that (Serve's max_ongoing_requests) so its own queue never 429s while others have room; beyond
`max_queue` requests waiting at the proxy Serve answers 503 (back-pressure).

Voices: every replica opens the library on `voices_dir`, a directory all of them see (a shared file
system: NFS, EFS, a Kubernetes ReadWriteMany volume). The library lists the directory on every lookup,
writes uploads whole (os.replace) and each replica computes a clip's voice itself once (its memory cache),
so an upload on one replica is usable on every other one at once. An object store (S3, GCS) would slot in
behind VoiceLibrary's few file operations (list, read, write whole, delete) as a mounted bucket or a
`fsspec` file system, unchanged above it.

Shutdown: `serve.shutdown()` (the command does it on SIGTERM or Ctrl-C) stops routing to the replicas,
waits up to `request_timeout` for their in-flight requests (streams included), runs the app's shutdown
(the workers end) and closes each model.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

try:
    import ray
    from ray import serve
except ImportError as exc:  # one clear line, as the server extra's
    raise ImportError(f"serving on Ray needs its extra ({exc.name} is missing): "
                      "pip install 'faster-chatterbox[ray]'", name=exc.name) from None

from .app import create_app
from .main import load_model, random_checkpoint, server_options, warm_up

log = logging.getLogger("faster_chatterbox.server")
APP_NAME = "faster-chatterbox"
REPLICA_HEADER = b"x-replica"


class RayServeConfig(BaseModel):
    """Everything a Serve application of the speech server is built from: the model, the server's options
    (named as `serve`'s flags) and the scaling. `serve run ...:app_builder key=value ...` validates its
    arguments against it; `serve --ray` builds it from the command line."""

    model_config = ConfigDict(extra="forbid")

    # the model, per replica
    checkpoint: str | None = None  # local checkpoint directory (None: the hub model, or random weights)
    model: str = "chatterbox"  # settings.MODEL_NAMES, as `serve --model`
    repo_id: str | None = None  # None: the model's own release
    random_weights: Literal["full", "small"] | None = None
    device: str = "auto"
    preset: str = "fast"
    no_watermark: bool = False
    # the server, per replica (as `serve`)
    voices_dir: str | None = None  # a directory every replica sees; "none": built-in voice only
    max_input_chars: int = Field(4096, ge=1)
    max_queue: int = Field(64, ge=1)  # requests waiting at the proxy before Serve answers 503
    max_concurrency: int | None = Field(None, ge=1)  # requests one replica synthesises at once
    request_timeout: float = Field(300.0, gt=0)
    api_key: str | None = None
    cors_origin: list[str] | None = None
    # scaling
    replicas: int | None = Field(None, ge=1)  # a fixed number of replicas
    min_replicas: int | None = Field(None, ge=0)  # autoscaling bounds
    max_replicas: int | None = Field(None, ge=1)
    num_cpus: float = Field(1.0, ge=0)  # Ray resources of one replica
    num_gpus: float = Field(0.0, ge=0)  # 1 per replica on GPUs (fractions share a GPU between models)

    # read by server/main.py's server_options as the command line's arguments; Wyoming is not served on Ray
    wyoming_port: None = None
    host: str = "0.0.0.0"

    @model_validator(mode="after")
    def _one_source_one_scaling(self) -> RayServeConfig:
        if self.checkpoint is not None and self.random_weights is not None:
            raise ValueError("give either checkpoint or random_weights, not both")
        if self.replicas is not None and self.autoscaled:
            raise ValueError("give either replicas or min_replicas/max_replicas, not both")
        if self.autoscaled and self.replica_range[0] > self.replica_range[1]:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def replica_range(self) -> tuple[int, int]:
        """(fewest, most) replicas: min_replicas defaults to 1, max_replicas to max(min_replicas, 1)."""
        low = 1 if self.min_replicas is None else self.min_replicas
        return low, self.max_replicas if self.max_replicas is not None else max(low, 1)


class _ReplicaHeader:
    """Plain ASGI middleware: every response says which replica answered (X-Replica)."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, send_with_replica)


@serve.ingress()
class SpeechReplica:
    """One replica: a model loaded and warmed on its device, serving create_app's app."""

    def __init__(self, config: RayServeConfig):
        self.config = config
        self.tts = load_model(config)
        seconds = warm_up(self.tts)
        self.replica = serve.get_replica_context().replica_id.unique_id
        log.info("replica %s: model loaded (preset %s on %s), warmed up in %.1f s", self.replica,
                 self.tts.settings.preset, self.tts.device, seconds)

    def __serve_build_asgi_app__(self):
        app = create_app(self.tts, server_options(self.config, self.tts.random_weights))
        app.add_middleware(_ReplicaHeader, replica=self.replica)
        return app

    def __del__(self):
        tts = getattr(self, "tts", None)
        if tts is not None:
            tts.close()


def deployment_options(config: RayServeConfig) -> dict:
    """Serve's options for the speech deployment: replicas or autoscaling, resources, queues, shutdown."""
    options = dict(name="SpeechReplica", ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
                   max_queued_requests=config.max_queue, graceful_shutdown_timeout_s=config.request_timeout,
                   graceful_shutdown_wait_loop_s=1.0, health_check_period_s=10.0,
                   health_check_timeout_s=60.0)
    # a replica's batch: what autoscaling targets; it admits twice that so its own queue never refuses
    batch = config.max_concurrency or (32 if config.num_gpus > 0 else 8)
    options["max_ongoing_requests"] = 2 * batch
    if not config.autoscaled:
        options["num_replicas"] = config.replicas or 1
    else:
        low, high = config.replica_range
        options["autoscaling_config"] = {
            "min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
            "target_ongoing_requests": batch, "upscale_delay_s": 10.0, "downscale_delay_s": 300.0}
    return options


def speech_app(config: RayServeConfig):
    """The Serve application (bind it with serve.run) of the speech server under `config`. A random-weight
    checkpoint is written here, once, not by every replica at the same time (one machine's tests only:
    other nodes don't see this one's cache)."""
    if config.random_weights is not None:
        config = config.model_copy(update={"checkpoint": str(random_checkpoint(config.random_weights, config.model)),
                                           "random_weights": None})
    return serve.deployment(SpeechReplica).options(**deployment_options(config)).bind(config)


def app_builder(args: dict):
    """For `serve run faster_chatterbox.server.ray_serve:app_builder key=value ...` and Serve config
    files: the arguments are RayServeConfig's fields."""
    return speech_app(RayServeConfig.model_validate(args))


@dataclass(frozen=True)
class RayEndpoint:
    address: str | None  # a running cluster ("auto", "ray://host:10001"); None starts one on this machine
    host: str
    port: int


def serve_on_ray(config: RayServeConfig, endpoint: RayEndpoint) -> None:
    """`faster-chatterbox serve --ray`: deploy, serve until SIGTERM or Ctrl-C, then drain and shut down."""
    log.setLevel(logging.INFO)
    ray.init(address=endpoint.address, logging_level=logging.WARNING)
    # after ray.init, whose handlers would abort: a signal while the replicas load stops right after
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": endpoint.host, "port": endpoint.port})
        serve.run(speech_app(config), name=APP_NAME, route_prefix="/")  # returns once every replica is warm
        log.info("serving http://%s:%d on Ray Serve (%s)", endpoint.host, endpoint.port,
                 "%d to %d replicas, autoscaled" % config.replica_range if config.autoscaled
                 else f"{config.replicas or 1} replica(s)")
        stop.wait()
        log.info("draining in-flight requests, then stopping the replicas")
        drain(APP_NAME)
    finally:
        ray.shutdown()


def drain(name: str) -> None:
    """Stop Serve after the in-flight requests of application `name` end (each replica waits for them up
    to its graceful_shutdown_timeout_s). Deleting the application first lets the proxy carry their streams
    to the end: serve.shutdown() alone stops the proxy at once and cuts them."""
    serve.delete(name)
    serve.shutdown()


def config_from_args(args) -> RayServeConfig:
    """The command line's `serve --ray` arguments as a RayServeConfig."""
    given = {name: getattr(args, name) for name in RayServeConfig.model_fields if getattr(args, name, None) is not None}
    if given.get("checkpoint") is not None:
        given["checkpoint"] = str(Path(given["checkpoint"]).expanduser().resolve())
    if getattr(args, "wyoming_port", None) is not None:
        raise ValueError("--wyoming-port is not served on Ray: run a plain `serve` for Wyoming")
    return RayServeConfig.model_validate(given)
