"""Text of any length -> audio: chunks, batched T3, batched S3Gen, checks and retries, seamless joins, streaming.

  text --(fast presets: normalise numbers etc.) split into sentences, pack into chunks--> chunks
  chunks, a window of up to `batch_size` at a time:
      T3 (one batch; exact preset: one chunk after another) --> speech tokens --token checks--> (retry)
      S3Gen (one batch) --> audio per chunk --audio checks--> (retry)
  chunks --> trim edges, join with pauses or crossfades --> (optimize_quality: post-processing)

`synthesize` returns the whole result with per-chunk metadata (attempts, failure reasons, timings);
`stream` yields the audio chunk by chunk as soon as each is ready, the first chunk alone and first, the
next window's T3 running in a background thread while the current window is rendered.

Random streams: the exact preset consumes the global RNG as upstream does (one chunk: identical to
upstream's generate). The batched presets give each chunk attempt its own torch.Generator, seeded from
`seed` (or one draw of the global RNG), so a chunk's tokens and decoder noise do not depend on how the
chunks were batched.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from .audio.joins import join_chunks, remove_dc, trim_edges
from .checks import CheckLimits, audio_failure, speaker_similarity, token_budget, token_failure
from .engine.batch_decode import DecodeRequest, generate_speech_tokens_batch
from .engine.t3_decode import generate_speech_tokens
from .models.s3gen import S3_SR, SILENCE_TOKEN
from .audio.sinc_resample import sinc_resample
from .text.chunking import DEFAULT_PAUSES_S, Chunk

if TYPE_CHECKING:
    from .tts import ChatterboxTTS, Conditionals

log = logging.getLogger(__name__)

_SEED_STRIDE_CHUNK, _SEED_STRIDE_ATTEMPT = 7919, 104_729


@dataclass
class Job:
    """One call's settings, resolved and validated by ChatterboxTTS."""

    chunks: list[Chunk]
    conds: Conditionals
    sampling: dict  # temperature, cfg_weight, repetition_penalty, min_p, top_p
    max_new_tokens: int  # each chunk's token cap
    budget_factor: float | None  # chunk budget = factor x its expected tokens (capped); None: the cap
    solve: dict  # S3Gen.inference's n_timesteps, solver, schedule, sway_coef (and f0_smoothing)
    batched: bool
    seed: int  # base seed of the chunk generators (batched)
    max_retries: int
    limits: CheckLimits = field(default_factory=CheckLimits)
    render_batch: int = 1  # chunks per S3Gen batch within a window (batching does not pay on CPU:
    # benchmarks/s3gen_speed.md, 0.94x for 8 chunks; it is for GPUs)
    batch_size: int = 8  # chunks per window (1 for the exact preset: T3 then S3Gen, chunk after chunk, as
    # sequential upstream calls consume the global random stream)


@dataclass
class ChunkResult:
    index: int
    text: str
    tokens: torch.Tensor  # (T,) speech tokens given to S3Gen
    audio: np.ndarray  # (N,) float32 at 24 kHz, untrimmed
    attempts: int
    failures: list[str]  # one reason per failed attempt ("attempt 1: loop: ...")
    kind: str  # what ends the chunk (text.chunking.Chunk.kind): sets the pause after it
    t3_steps: int  # T3 decode steps of the kept attempt (special ids included)


@dataclass
class Piece:
    """A streamed piece of audio."""

    audio: np.ndarray  # (N,) float32 at `sample_rate`
    sample_rate: int
    chunk_index: int
    start_s: float  # where the piece starts in the whole output
    ready_s: float  # seconds from the call to this piece being ready
    last: bool


@dataclass
class SynthesisResult:
    audio: np.ndarray  # (N,) float32 at `sample_rate`
    sample_rate: int
    chunks: list[ChunkResult]
    joins: list[tuple[int, int]]  # per join, the span [start, end) of `audio` it touched
    timings: dict[str, float]  # t3_s, s3gen_s, total_s


class Clock:
    """Seconds spent per stage, across threads."""

    def __init__(self):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _generator(job: Job, index: int, attempt: int, device: torch.device, stage: str) -> torch.Generator:
    """The random stream of one chunk attempt's T3 sampling (stage "t3") or decoder noise ("s3gen")."""
    seed = job.seed + _SEED_STRIDE_CHUNK * index + _SEED_STRIDE_ATTEMPT * attempt + (stage == "s3gen")
    return torch.Generator(device=device).manual_seed(seed % 2**63)


def _budget(job: Job, text: str) -> int:
    if job.budget_factor is None:
        return job.max_new_tokens
    return token_budget(text, job.max_new_tokens, job.budget_factor)


class Decoded(NamedTuple):
    tokens: list[int]  # speech tokens for S3Gen (the stop token and other special ids dropped)
    stopped: bool  # T3 sampled its stop token (False: the budget ran out)
    steps: int  # decode steps (sampled ids, special ones included)


def _decode(tts: ChatterboxTTS, job: Job, indices: list[int],
            generators: dict[int, torch.Generator]) -> dict[int, Decoded]:
    """T3 for chunks `indices`, one batch (exact preset: one after another)."""
    t3, stop = tts.t3, tts.t3.cfg.stop_speech_token
    texts = {i: tts.text_tokens(job.chunks[i].text) for i in indices}
    with tts.t3_lock:  # T3's KV cache is one per model: a decode-ahead thread and retries take turns
        if job.batched:
            requests = [DecodeRequest(job.conds.t3, texts[i], max_new_tokens=_budget(job, job.chunks[i].text),
                                      generator=generators[i], **job.sampling) for i in indices]
            outputs = generate_speech_tokens_batch(t3, requests)
        else:
            outputs = [generate_speech_tokens(t3, job.conds.t3, texts[i], **job.sampling,
                                              max_new_tokens=_budget(job, job.chunks[i].text)) for i in indices]
    decoded = {}
    for i, out in zip(indices, outputs):
        tokens = out.tolist()
        stopped = bool(tokens) and tokens[-1] == stop
        decoded[i] = Decoded([t for t in tokens if t < tts.s3gen.vocab_size], stopped, len(tokens))
    return decoded


def _render(tts: ChatterboxTTS, job: Job, tokens: dict[int, list[int]],
            generators: dict[int, torch.Generator]) -> dict[int, np.ndarray]:
    """S3Gen for chunks with tokens: {index: (N,) float32 audio}; chunks without speech tokens get silence."""
    device, ref, s3gen = tts.device, job.conds.gen, tts.s3gen
    if s3gen.meanflow:  # as Turbo feeds its meanflow decoder: the tokens, then 0.12 s of silence
        tokens = {i: t + [SILENCE_TOKEN] * 3 if t else t for i, t in tokens.items()}
    todo = [i for i, t in tokens.items() if t]
    audio = {i: np.zeros(0, dtype=np.float32) for i, t in tokens.items() if not t}
    if job.batched and job.render_batch > 1 and todo:
        wavs = []
        for k in range(0, len(todo), job.render_batch):
            group = todo[k : k + job.render_batch]
            wavs += s3gen.inference_batch([torch.tensor(tokens[i], device=device) for i in group], [ref] * len(group),
                                          noises=[_noise(s3gen, ref, len(tokens[i]), generators[i]) for i in group],
                                          **job.solve)
    elif job.batched:  # one chunk at a time, each with its own noise
        wavs = [s3gen.inference(torch.tensor(tokens[i], device=device), ref, noise=_noise(s3gen, ref, len(tokens[i]),
                                generators[i]), **job.solve) for i in todo]
    else:
        wavs = [s3gen.inference(torch.tensor(tokens[i], device=device), ref, **job.solve) for i in todo]
    for i, wav in zip(todo, wavs):
        audio[i] = wav.reshape(-1).float().cpu().numpy()
    return audio


def _noise(s3gen, ref: dict, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """A chunk's starting noise for the flow decoder (1, 80, prompt frames + 2 n_tokens), from its own stream."""
    frames = ref["prompt_feat"].shape[1] + 2 * n_tokens
    return torch.randn(1, s3gen.flow.cfg.mel_dim, frames, generator=generator, device=generator.device)


def _similarity(tts: ChatterboxTTS, job: Job, wav: np.ndarray) -> float | None:
    if len(wav) < tts.sr // 2:  # too short for a meaningful x-vector
        return None
    wav_16k = sinc_resample(torch.from_numpy(wav).to(tts.device)[None], tts.sr, S3_SR)
    return speaker_similarity(tts.s3gen.speaker_encoder.inference(wav_16k), job.conds.gen["embedding"])


def _window(tts: ChatterboxTTS, job: Job, indices: list[int], clock: Clock,
            t3_first: dict[int, Decoded] | None = None) -> list[ChunkResult]:
    """Generate the chunks `indices`, retrying failed ones; `t3_first`: their first T3 attempt if already run."""
    failures: dict[int, list[str]] = {i: [] for i in indices}
    steps: dict[int, int] = {}
    done: dict[int, ChunkResult] = {}
    pending, attempt = list(indices), 0
    while pending:
        if attempt == 0 and t3_first is not None:
            decoded = t3_first
        else:
            start = time.perf_counter()
            decoded = _decode(tts, job, pending, {i: _generator(job, i, attempt, tts.device, "t3") for i in pending})
            clock.add("t3_s", time.perf_counter() - start)
        last_try = attempt >= job.max_retries
        retry, render = [], {}
        for i in pending:
            tokens, stopped, steps[i] = decoded[i]
            reason = token_failure(tokens, job.chunks[i].text, stopped, job.limits) if job.max_retries else None
            if reason and not last_try:
                failures[i].append(f"attempt {attempt + 1}: {reason}")
                retry.append(i)
            else:
                if reason:
                    failures[i].append(f"attempt {attempt + 1}: {reason} (kept: out of retries)")
                render[i] = tokens
        start = time.perf_counter()
        audio = _render(tts, job, render, {i: _generator(job, i, attempt, tts.device, "s3gen") for i in render})
        clock.add("s3gen_s", time.perf_counter() - start)
        for i, tokens in render.items():
            reason = None
            if job.max_retries:
                reason = audio_failure(audio[i], tts.sr, _similarity(tts, job, audio[i]), job.limits)
            if reason and not last_try:
                failures[i].append(f"attempt {attempt + 1}: {reason}")
                retry.append(i)
                continue
            if reason:
                failures[i].append(f"attempt {attempt + 1}: {reason} (kept: out of retries)")
            done[i] = ChunkResult(i, job.chunks[i].text, torch.tensor(tokens, dtype=torch.long), audio[i],
                                  attempt + 1, failures[i], job.chunks[i].kind, steps[i])
        pending = sorted(retry)
        attempt += 1
    for i in indices:
        if done[i].failures:
            log.warning("chunk %d: %s", i, "; ".join(done[i].failures))
    return [done[i] for i in indices]


def _windows(job: Job, first_alone: bool, start: int = 0) -> list[list[int]]:
    indices = list(range(start, len(job.chunks)))
    head = [indices[:1]] if first_alone and len(indices) > 1 else []
    rest = indices[len(head):]
    return head + [rest[k : k + job.batch_size] for k in range(0, len(rest), job.batch_size)]


class DecodeAhead(threading.Thread):
    """Decodes each window's first T3 attempt in the background, at most one window ahead of its consumer."""

    def __init__(self, tts: ChatterboxTTS, job: Job, windows: list[list[int]], clock: Clock):
        super().__init__(name="t3-decode-ahead", daemon=True)
        self.tts, self.job, self.windows, self.clock = tts, job, windows, clock
        self._decoded: queue.Queue = queue.Queue(maxsize=1)
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for window in self.windows:
                if self._halt.is_set():
                    return
                start = time.perf_counter()
                with torch.inference_mode():
                    generators = {i: _generator(self.job, i, 0, self.tts.device, "t3") for i in window}
                    result = _decode(self.tts, self.job, window, generators)
                self.clock.add("t3_s", time.perf_counter() - start)
                self._decoded.put(result)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._decoded.put(exc)

    def next_window(self) -> dict[int, Decoded]:
        item = self._decoded.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop after the window being decoded (if any) and wait for the thread."""
        self._halt.set()
        while self.is_alive():  # unblock a thread waiting to put
            try:
                self._decoded.get(timeout=0.1)
            except queue.Empty:
                pass
        self.join()


def chunk_results(tts: ChatterboxTTS, job: Job, clock: Clock, *, first_alone: bool = False, start: int = 0,
                  overlap: bool = False, progress: bool = False) -> Iterator[ChunkResult]:
    """The results of chunks start, start + 1, ..., in order, window by window.

    overlap: run the next window's first T3 attempt in a background thread while this window is rendered
    (batched presets only: the exact preset's global random stream must be consumed in order).
    Retries decode here, taking turns on T3 (`t3_lock`).
    """
    windows = _windows(job, first_alone, start)
    bar = tqdm(total=len(job.chunks) - start, desc="Chunks", unit="chunk", disable=not progress or None, leave=False)
    ahead = DecodeAhead(tts, job, windows, clock) if overlap and job.batched and windows else None
    if ahead is not None:
        ahead.start()
    try:
        for window in windows:
            results = _window(tts, job, window, clock, t3_first=ahead.next_window() if ahead else None)
            bar.update(len(results))
            yield from results
    finally:
        if ahead is not None:
            ahead.close()
        bar.close()


def _edges(result: ChunkResult, sr: int, trim: bool) -> np.ndarray:
    return trim_edges(remove_dc(result.audio), sr) if trim else result.audio


def assemble(results: list[ChunkResult], sr: int, trim: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The chunks' audio joined with the pause their boundary calls for (a crossfade inside a sentence);
    trim: remove DC and cut each chunk's leading and trailing silence and noise first."""
    spoken = [r for r in results if len(r.audio)]
    if not spoken:
        log.warning("T3 produced no speech tokens; returning silence")
        return np.zeros(0, dtype=np.float32), []
    pieces = [_edges(r, sr, trim) for r in spoken]
    return join_chunks(pieces, [DEFAULT_PAUSES_S.get(r.kind, 0.0) for r in spoken[:-1]], sr)


class StreamJoiner:
    """Joins streamed audio as `assemble(trim=True)` joins whole chunks, emitting all but a held-back tail
    (the last `crossfade_ms`, which the next join shapes)."""

    def __init__(self, sr: int, clock: Clock, crossfade_ms: float = 20.0):
        self.sr, self.clock, self.crossfade_ms = sr, clock, crossfade_ms
        self.hold = int(sr * crossfade_ms / 1000)
        self.pending: np.ndarray | None = None
        self.pause = 0.0
        self.emitted = 0
        self.index = 0

    def _emit(self, joined: np.ndarray, index: int) -> Piece | None:
        ready, self.pending, self.index = joined[: -self.hold], joined[-self.hold :], index
        if not len(ready):
            return None
        piece = Piece(ready, self.sr, index, self.emitted / self.sr, self.clock.elapsed(), last=False)
        self.emitted += len(ready)
        return piece

    def chunk(self, audio: np.ndarray, index: int) -> Piece | None:
        """A new chunk's (first) audio, after the pause the previous chunk called for."""
        if self.pending is None:
            return self._emit(audio, index)
        return self._emit(join_chunks([self.pending, audio], [self.pause], self.sr, crossfade_ms=self.crossfade_ms)[0],
                          index)

    def more(self, audio: np.ndarray, overlap: int, index: int) -> Piece | None:
        """More of the current chunk, whose first `overlap` samples re-render the held-back tail's time span:
        a linear crossfade (the two renderings are of the same sound)."""
        held, n = self.pending, min(overlap, len(self.pending), len(audio))
        fade = ((np.arange(n) + 0.5) / n).astype(np.float32)
        mixed = held[len(held) - n :] * (1 - fade) + audio[:n] * fade
        return self._emit(np.concatenate([held[: len(held) - n], mixed, audio[n:]]), index)

    def end_chunk(self, kind: str) -> None:
        self.pause = DEFAULT_PAUSES_S.get(kind, 0.0)

    def finish(self) -> Piece | None:
        if self.pending is None:
            return None
        return Piece(self.pending, self.sr, self.index, self.emitted / self.sr, self.clock.elapsed(), last=True)


def streamed_pieces(results: Iterator[ChunkResult], sr: int, clock: Clock,
                    joiner: StreamJoiner | None = None) -> Iterator[Piece]:
    """Pieces of the joined output as chunks arrive: together exactly what `assemble(trim=True)` gives
    (after what `joiner` already emitted)."""
    joiner = joiner or StreamJoiner(sr, clock)
    for result in results:
        if len(result.audio):
            piece = joiner.chunk(_edges(result, sr, trim=True), result.index)
            joiner.end_chunk(result.kind)
            if piece is not None:
                yield piece
    last = joiner.finish()
    if last is not None:
        yield last


@dataclass(frozen=True)
class TokenStreaming:
    """Token-level streaming of a chunk: audio every few tokens instead of once per chunk (CosyVoice-style).

    Each piece re-renders its new tokens with up to `context` earlier tokens (and the decoder prompt) in
    front, holds back the last `lookahead` tokens (the flow encoder looks 3 tokens ahead), and overlaps
    the previous piece by `overlap_ms`, crossfaded.
    """

    first_tokens: int = 25  # 1 s of speech before the first audio
    piece_tokens: int = 50
    context: int = 50
    lookahead: int = 3
    overlap_ms: float = 20.0


def stream_chunk_tokens(tts: ChatterboxTTS, job: Job, index: int, joiner: StreamJoiner, clock: Clock,
                        streaming: TokenStreaming = TokenStreaming()) -> Iterator[Piece]:
    """Chunk `index` of a batched job, streamed as T3 samples it (one attempt: no checks, no retry)."""
    chunk, device, ref = job.chunks[index], tts.device, job.conds.gen
    updates: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def report(_, tokens: list[int]) -> None:
        if cancel.is_set():
            raise _Cancelled
        updates.put(list(tokens))

    request = DecodeRequest(job.conds.t3, tts.text_tokens(chunk.text), max_new_tokens=_budget(job, chunk.text),
                            generator=_generator(job, index, 0, device, "t3"), **job.sampling)

    def decode():
        try:
            start = time.perf_counter()
            with tts.t3_lock, torch.inference_mode():
                out = generate_speech_tokens_batch(tts.t3, [request], on_tokens=report)
            clock.add("t3_s", time.perf_counter() - start)
            updates.put(("done", out[0].tolist()))
        except _Cancelled:
            pass
        except BaseException as exc:  # re-raised by the consumer
            updates.put(exc)

    thread = threading.Thread(target=decode, name="t3-stream", daemon=True)
    thread.start()
    noise_gen = _generator(job, index, 0, device, "s3gen")
    vocab, spf = tts.s3gen.vocab_size, 2 * 480  # samples per token (2 mel frames of 480 samples)
    overlap = int(tts.sr * streaming.overlap_ms / 1000)
    tokens: list[int] = []
    emitted, done, first = 0, False, True
    try:
        while not done:
            item = updates.get()
            if isinstance(item, BaseException):
                raise item
            done = isinstance(item, tuple)
            tokens = [t for t in (item[1] if done else item) if t < vocab]
            ready = len(tokens) if done else len(tokens) - streaming.lookahead
            need = streaming.first_tokens if first else streaming.piece_tokens
            if ready <= emitted or (not done and ready - emitted < need):
                continue
            start = max(0, emitted - streaming.context)
            segment = tokens[start:]  # context + new + lookahead
            noise = _noise(tts.s3gen, ref, len(segment), noise_gen)
            begin = time.perf_counter()
            wav = tts.s3gen.inference(torch.tensor(segment, device=device), ref, noise=noise, **job.solve)
            clock.add("s3gen_s", time.perf_counter() - begin)
            wav = wav.reshape(-1).float().cpu().numpy()
            lead = 0 if first else min(overlap, (emitted - start) * spf)
            audio = wav[(emitted - start) * spf - lead : (ready - start) * spf]
            piece = joiner.chunk(audio, index) if first else joiner.more(audio, lead, index)
            first, emitted = False, ready
            if piece is not None:
                yield piece
    finally:
        cancel.set()  # a consumer that stops early stops the decode at its next report
        thread.join()
    joiner.end_chunk(chunk.kind)


class _Cancelled(Exception):
    pass
