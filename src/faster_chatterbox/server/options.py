"""What a server runs with besides the model (the `serve` command's options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerOptions:
    max_input_chars: int = 4096  # OpenAI's limit
    max_queue: int = 64  # speech requests waiting or running; one more is answered 429
    max_concurrency: int | None = None  # speech requests synthesised at once (None: the model's T3 batch size)
    request_timeout: float = 300.0  # seconds from arrival; past it a request is cancelled (504 if nothing was sent)
    api_key: str | None = None  # Bearer key for /v1 and /metrics (None: open)
    cors_origins: tuple[str, ...] = ()  # CORS only for these origins (none: no CORS headers)
    voices_dir: Path | None = None  # the voice library (None: no uploads, built-in voice only)
    max_upload_bytes: int = 20 * 2**20  # one voice upload
    max_body_bytes: int = 2**20  # any other request body (JSON)
    retry_after_s: int = 2  # the Retry-After of a 429
    wyoming_port: int | None = None  # also serve Wyoming (Home Assistant) on this TCP port
    wyoming_host: str = "127.0.0.1"
    random_weights: bool = False  # shown on the page and in /info (set from the model)
