"""Text of any length -> audio: chunks, batched T3, batched S3Gen, checks and retries, seamless joins, streaming.

  text --(fast presets: normalise numbers etc.) split into sentences, pack into chunks--> chunks
  chunks, a window of up to `batch_size` at a time:
      T3 (one batch; exact preset: one chunk after another) --> speech tokens --token checks--> (retry)
      S3Gen (one batch) --> audio per chunk --audio checks--> (retry)
  chunks --> trim edges, join with pauses or crossfades --> (optimize_quality: post-processing)

`synthesize` returns the whole result with per-chunk metadata (attempts, failure reasons, timings);
`stream` yields the audio chunk by chunk as soon as each is ready, the first chunk alone and first, the
next window's T3 decoding while the current window is rendered.

T3 (batched presets) runs in the model's scheduler thread (engine/scheduler.py): the chunks of every call
in flight, from any thread, share its continuously refilled batch.

Random streams: the exact preset consumes the global RNG as upstream does (one chunk: identical to
upstream's generate). The batched presets give each chunk attempt its own torch.Generator, seeded from
`seed` (or one draw of the global RNG), so a chunk's tokens, decoder noise and vocoder source noise do not
depend on how the chunks were batched, nor on other calls running at the same time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from .audio.joins import join_chunks, remove_dc, trim_edges
from .checks import CheckLimits, audio_failure, speaker_similarity, token_budget, token_failure
from .engine.batch_decode import DecodeRequest
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
    """The random stream of one chunk attempt's T3 sampling (stage "t3") or S3Gen's noise: flow decoder,
    then vocoder source ("s3gen")."""
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


class T3Work:
    """The T3 decodes of chunks `indices`, one attempt each: batched presets submit them to the model's
    scheduler (shared, continuously batched with whatever else is decoding) and return at once; the exact
    preset decodes them here, one after another on the global random stream, as upstream's calls do."""

    def __init__(self, tts: ChatterboxTTS, job: Job, indices: list[int], attempt: int):
        self.tts, self.indices = tts, indices
        self.start = self.finished = time.perf_counter()
        self.futures: dict[int, Future] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        texts = {i: tts.text_tokens(job.chunks[i].text) for i in indices}
        if job.batched:
            for i in indices:
                request = DecodeRequest(job.conds.t3, texts[i], max_new_tokens=_budget(job, job.chunks[i].text),
                                        generator=_generator(job, i, attempt, tts.device, "t3"), **job.sampling)
                self.futures[i] = tts.t3_scheduler.submit(request)
                self.futures[i].add_done_callback(self._stamp)
        else:
            with tts.t3_lock:  # one KV cache per model: the scheduler's batches and this loop take turns
                self.outputs = {i: generate_speech_tokens(tts.t3, job.conds.t3, texts[i], **job.sampling,
                                                          max_new_tokens=_budget(job, job.chunks[i].text))
                                for i in indices}
            self.finished = time.perf_counter()

    def _stamp(self, _future: Future) -> None:
        self.finished = max(self.finished, time.perf_counter())

    def result(self, clock: Clock) -> dict[int, Decoded]:
        """Wait for the tokens; adds the decode's wall time (submission to last tokens) to clock's t3_s."""
        try:
            outputs = self.outputs or {i: f.result() for i, f in self.futures.items()}
        except BaseException:  # interrupted (Ctrl-C) or failed: nothing goes on decoding for this call
            self.cancel()
            raise
        clock.add("t3_s", self.finished - self.start)
        stop, vocab = self.tts.t3.cfg.stop_speech_token, self.tts.s3gen.vocab_size
        decoded = {}
        for i in self.indices:
            tokens = outputs[i].tolist()
            stopped = bool(tokens) and tokens[-1] == stop
            decoded[i] = Decoded([t for t in tokens if t < vocab], stopped, len(tokens))
        return decoded

    def cancel(self) -> None:
        for future in self.futures.values():
            future.cancel()


def _render(tts: ChatterboxTTS, job: Job, tokens: dict[int, list[int]],
            generators: dict[int, torch.Generator]) -> dict[int, np.ndarray]:
    """S3Gen for chunks with tokens: {index: (N,) float32 audio}; chunks without speech tokens get silence.
    Renders take turns across calls (`render_slots`)."""
    if tts.s3gen.meanflow:  # as Turbo feeds its meanflow decoder: the tokens, then 0.12 s of silence
        tokens = {i: t + [SILENCE_TOKEN] * 3 if t else t for i, t in tokens.items()}
    todo = [i for i, t in tokens.items() if t]
    audio = {i: np.zeros(0, dtype=np.float32) for i, t in tokens.items() if not t}
    with tts.render_slots:
        wavs = _render_wavs(tts, job, tokens, todo, generators)
    for i, wav in zip(todo, wavs):
        audio[i] = wav.reshape(-1).float().cpu().numpy()
    return audio


def _render_wavs(tts: ChatterboxTTS, job: Job, tokens: dict[int, list[int]], todo: list[int],
                 generators: dict[int, torch.Generator]) -> list[torch.Tensor]:
    """The waveforms of chunks `todo`, in order."""
    device, ref, s3gen = tts.device, job.conds.gen, tts.s3gen
    if job.batched and job.render_batch > 1 and todo:
        wavs = []
        for k in range(0, len(todo), job.render_batch):
            group = todo[k : k + job.render_batch]
            wavs += s3gen.inference_batch([torch.tensor(tokens[i], device=device) for i in group], [ref] * len(group),
                                          noises=[_noise(s3gen, ref, len(tokens[i]), generators[i]) for i in group],
                                          vocoder_generators=[generators[i] for i in group], **job.solve)
        return wavs
    if job.batched:  # one chunk at a time, each with its own noise
        return [s3gen.inference(torch.tensor(tokens[i], device=device), ref, noise=_noise(s3gen, ref, len(tokens[i]),
                                generators[i]), vocoder_generator=generators[i], **job.solve) for i in todo]
    return [s3gen.inference(torch.tensor(tokens[i], device=device), ref, **job.solve) for i in todo]


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
            t3_first: T3Work | None = None) -> list[ChunkResult]:
    """Generate the chunks `indices`, retrying failed ones; `t3_first`: their first T3 attempt if already
    submitted."""
    failures: dict[int, list[str]] = {i: [] for i in indices}
    steps: dict[int, int] = {}
    done: dict[int, ChunkResult] = {}
    pending, attempt = list(indices), 0
    while pending:
        work = t3_first if attempt == 0 and t3_first is not None else T3Work(tts, job, pending, attempt)
        decoded = work.result(clock)
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


def chunk_results(tts: ChatterboxTTS, job: Job, clock: Clock, *, first_alone: bool = False, start: int = 0,
                  overlap: bool = False, progress: bool = False) -> Iterator[ChunkResult]:
    """The results of chunks start, start + 1, ..., in order, window by window.

    overlap: submit the next window's T3 (first attempts) while this window is rendered, so that T3 and
    S3Gen run side by side (batched presets only: the exact preset's global random stream must be consumed
    in order). Retries are submitted when needed.
    """
    windows = _windows(job, first_alone, start)
    bar = tqdm(total=len(job.chunks) - start, desc="Chunks", unit="chunk", disable=not progress or None, leave=False)
    ahead = overlap and job.batched
    submitted = [T3Work(tts, job, windows[0], 0)] if ahead and windows else []
    try:
        for k, window in enumerate(windows):
            if ahead and k + 1 < len(windows):
                submitted.append(T3Work(tts, job, windows[k + 1], 0))
            results = _window(tts, job, window, clock, t3_first=submitted.pop(0) if ahead else None)
            bar.update(len(results))
            yield from results
    finally:
        for work in submitted:  # a consumer that stops early leaves nothing decoding for it
            work.cancel()
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
    """Chunk `index` of a batched job, streamed as T3 samples it: one attempt, as its audio is out before its
    tokens are complete; a failed token check is logged, not retried."""
    chunk, device, ref = job.chunks[index], tts.device, job.conds.gen
    updates: queue.Queue = queue.Queue()  # token lists as they come, then the finished Future
    request = DecodeRequest(job.conds.t3, tts.text_tokens(chunk.text), max_new_tokens=_budget(job, chunk.text),
                            generator=_generator(job, index, 0, device, "t3"), **job.sampling)
    submitted, ended = time.perf_counter(), []
    future = tts.t3_scheduler.submit(request, on_tokens=lambda tokens: updates.put(list(tokens)))
    future.add_done_callback(lambda f: (ended.append(time.perf_counter()), updates.put(f)))
    noise_gen = _generator(job, index, 0, device, "s3gen")
    vocab, spf = tts.s3gen.vocab_size, 2 * 480  # samples per token (2 mel frames of 480 samples)
    overlap = int(tts.sr * streaming.overlap_ms / 1000)
    tokens: list[int] = []
    emitted, done, first = 0, False, True
    try:
        while not done:
            item = updates.get()
            done = isinstance(item, Future)
            if done:
                clock.add("t3_s", ended[0] - submitted)
                item = item.result().tolist()  # raises what the decode raised
                stopped = bool(item) and item[-1] == tts.t3.cfg.stop_speech_token
            tokens = [t for t in item if t < vocab]
            ready = len(tokens) if done else len(tokens) - streaming.lookahead
            need = streaming.first_tokens if first else streaming.piece_tokens
            if ready <= emitted or (not done and ready - emitted < need):
                continue
            start = max(0, emitted - streaming.context)
            segment = tokens[start:]  # context + new + lookahead
            noise = _noise(tts.s3gen, ref, len(segment), noise_gen)
            begin = time.perf_counter()
            with tts.render_slots:
                wav = tts.s3gen.inference(torch.tensor(segment, device=device), ref, noise=noise,
                                          vocoder_generator=noise_gen, **job.solve)
            clock.add("s3gen_s", time.perf_counter() - begin)
            wav = wav.reshape(-1).float().cpu().numpy()
            lead = 0 if first else min(overlap, (emitted - start) * spf)
            audio = wav[(emitted - start) * spf - lead : (ready - start) * spf]
            piece = joiner.chunk(audio, index) if first else joiner.more(audio, lead, index)
            first, emitted = False, ready
            if piece is not None:
                yield piece
    finally:
        future.cancel()  # a consumer that stops early stops the decode (no-op once it is done)
    reason = token_failure(tokens, chunk.text, stopped, job.limits) if job.max_retries else None
    if reason:
        log.warning("streamed chunk %d failed its token check (%s); its audio was already out: not retried",
                    index, reason)
    joiner.end_chunk(chunk.kind)
