"""Speech jobs between the event loop and the model: admission, worker threads, cancellation.

A request is admitted (or refused: 429 when `max_queue` requests are already waiting or running), then its
synthesis runs on one of `max_concurrency` worker threads: `generate_stream` with the pieces encoded as
they come, handed to the event loop through an asyncio queue, so the loop never blocks on the model.
Cancelling a job (client gone, deadline passed) makes its worker close the generator at the next piece,
which cancels the job's T3 decoding in the engine's scheduler; a job still waiting for a worker is
dropped at once. Every admitted job releases its place exactly once, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .catalog import VoiceCatalog
from .encode import AudioEncoder
from .metrics import Metrics

log = logging.getLogger("faster_chatterbox.server")

TOKENS_PER_SECOND = 25  # speech tokens per second of audio (S3 tokenizer rate)


class QueueFull(Exception):
    pass


@dataclass
class SpeechJob:
    """One synthesis: what to say and how to encode it."""

    text: str
    voice: str  # a checked catalog name
    params: dict  # generate_stream's keyword arguments (Chatterbox controls)
    fmt: str
    speed: float = 1.0
    whole: bool = False  # the caller takes the bytes only at the end (exact WAV sizes)


@dataclass
class Outcome:
    """What a finished job measured (filled by its worker)."""

    audio_seconds: float = 0.0  # of the encoded output (after the time stretch)
    spoken_seconds: float = 0.0  # as synthesised (before it)
    first_audio_s: float | None = None  # from submission to the first encoded bytes
    input_tokens: int = 0
    output_tokens: int = 0
    synth_s: float = 0.0  # worker wall time


@dataclass(eq=False)
class Running:
    """A submitted job, consumed on the event loop with `next()`: ("audio", bytes) items, then ("done",
    Outcome), or ("error", exception)."""

    job: SpeechJob
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome = field(default_factory=Outcome)
    future: Future | None = None
    started: float | None = None  # when a worker took it
    finished: bool = False  # the consumer got "done" or "error"

    def put(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    async def next(self, deadline: float) -> tuple[str, object]:
        """The next item; TimeoutError at `deadline` (time.perf_counter seconds)."""
        item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.perf_counter()))
        if item[0] in ("done", "error"):
            self.finished = True
        return item


class SpeechService:
    def __init__(self, tts, catalog: VoiceCatalog, metrics: Metrics, *, max_queue: int, max_concurrency: int):
        if max_queue < 1 or max_concurrency < 1:
            raise ValueError("max_queue and max_concurrency must be at least 1")
        self.tts, self.catalog, self.metrics = tts, catalog, metrics
        self.max_queue, self.max_concurrency = max_queue, max_concurrency
        self.executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="speech")
        self._lock = threading.Lock()
        self.admitted = 0  # waiting + running
        self.closed = False

    @property
    def full(self) -> bool:
        return self.admitted >= self.max_queue

    def submit(self, job: SpeechJob) -> Running:
        """Admit and start `job` (call on the event loop); QueueFull when max_queue jobs are admitted."""
        with self._lock:
            if self.closed or self.admitted >= self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull
            self.admitted += 1
        self.metrics.queue_depth.inc()
        running = Running(job, asyncio.get_running_loop())
        released = threading.Event()
        running.future = self.executor.submit(self._work, running, released)
        running.future.add_done_callback(lambda f: f.cancelled() and self._release(running, released, started=False))
        return running

    def cancel(self, running: Running, reason: str) -> None:
        """Stop `running` (its worker closes the generator at the next piece, or it never starts)."""
        if running.finished or running.cancelled.is_set():
            return
        running.cancelled.set()
        self.metrics.cancelled.labels(reason).inc()
        if running.future is not None:
            running.future.cancel()  # succeeds while it waits for a worker; its done-callback releases it

    def close(self) -> None:
        """Refuse new jobs, cancel waiting ones, let running ones end."""
        with self._lock:
            self.closed = True
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _release(self, running: Running, released: threading.Event, *, started: bool) -> None:
        with self._lock:
            if released.is_set():
                return
            released.set()
            self.admitted -= 1
        (self.metrics.in_flight if started else self.metrics.queue_depth).dec()

    def _work(self, running: Running, released: threading.Event) -> None:
        self.metrics.queue_depth.dec()
        self.metrics.in_flight.inc()
        running.started = time.perf_counter()
        try:
            if not running.cancelled.is_set():
                self._synthesize(running)
        except BaseException as exc:  # handed to the consumer, which answers (or logs) it
            running.put("error", exc)
        finally:
            self._release(running, released, started=True)

    def _synthesize(self, running: Running) -> None:
        job, outcome = running.job, running.outcome
        voice = self.catalog.resolve(job.voice)
        outcome.input_tokens = len(self.tts.tokenizer.encode(job.text))
        encoder = AudioEncoder(job.fmt, self.tts.sr, job.speed, exact_length=job.whole)
        spoken = 0
        pieces = self.tts.generate_stream(job.text, voice=voice, **job.params)
        try:
            for piece in pieces:
                if running.cancelled.is_set():
                    return  # closing `pieces` (below) cancels its decoding
                spoken += len(piece.audio)
                self._emit(running, encoder.encode(piece.audio))
            self._emit(running, encoder.finish())
        finally:
            pieces.close()
        outcome.spoken_seconds = spoken / self.tts.sr
        outcome.audio_seconds = encoder.seconds
        outcome.output_tokens = round(outcome.spoken_seconds * TOKENS_PER_SECOND)
        outcome.synth_s = time.perf_counter() - running.started
        self._record(outcome)
        running.put("done", outcome)

    def _record(self, outcome: Outcome) -> None:
        if outcome.first_audio_s is not None:
            self.metrics.time_to_first_audio.observe(outcome.first_audio_s)
        if outcome.spoken_seconds > 0:
            self.metrics.real_time_factor.observe(outcome.synth_s / outcome.spoken_seconds)
        self.metrics.audio_seconds.inc(outcome.audio_seconds)

    def _emit(self, running: Running, data: bytes) -> None:
        if not data:
            return
        if running.outcome.first_audio_s is None:
            running.outcome.first_audio_s = time.perf_counter() - running.submitted
        running.put("audio", data)
