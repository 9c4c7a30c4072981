"""The engine: text of any length -> audio, for any number of callers at once.

  text --(normalise numbers etc.) split into sentences, pack into chunks--> chunks
  chunks, a window of up to `max_batch` at a time:
      T3 (continuous batching across calls; or one chunk after another) --> speech tokens --token checks--> (retry)
      S3Gen (S3Gen.render) --> audio per chunk --audio checks--> (retry; out of retries: the least-bad attempt)
  chunks --> trim edges, join with pauses or crossfades

`Engine` owns the models, the T3 scheduler (one thread decoding every call's chunks in one continuously
refilled batch), the S3Gen render queue (chunks of calls waiting at the same time with the same solve share
a render batch, where the settings batch renders), tokenisation and voices. It knows no presets: every call
brings its `CallSettings` and its `Voice`; the result carries both, and passing them back reproduces the audio.

Random streams: with `seeded_streams` every chunk attempt has its own torch.Generators, hashed from the
call's seed, its index and attempt (settings.stream_seed), so a chunk's tokens, decoder noise and vocoder
noise do not depend on its batch mates nor on other calls. Otherwise the global RNG is consumed as upstream
does, chunk after chunk (seeded with `seed`, or restored to the state the call started from).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from .audio.io import load_audio, resample
from .audio.joins import join_chunks, remove_dc, trim_edges
from .audio.postprocess import normalize_loudness
from .audio.sinc_resample import sinc_resample
from .checks import Failure, audio_failure, speaker_similarity, token_budget, token_failure
from .engine.batch_decode import DecodeRequest, PrefixCache, decode_alone
from .engine.render_slots import RenderQueue
from .engine.block_diffusion import FlashBatch, FlashRequest, generate_block_diffusion, request_problem, \
    uncond_block_prior
from .engine.scheduler import T3Scheduler
from .engine.static_batch import new_decode_batch
from .models.hift import F0Smoothing
from .models.s3gen import S3GEN_SR, S3_SR, SILENCE_TOKEN, S3Gen
from .models.t3 import T3, T3Cond
from .models.voice_encoder import VoiceEncoder
from .settings import CallSettings, EngineSettings, SolveSettings, stream_seed, torch_seed
from .text.chunking import DEFAULT_PAUSES_S, Chunk, check_text, pack_chunks
from .text.english import normalize_english
from .text.multilingual import sentence_language
from .text.tokenizer import EnglishTokenizer, check_speakable
from .voices import Voice, clip_digest

log = logging.getLogger(__name__)

# Of a reference clip, what is read: T3 takes its first 6 s, S3Gen 10 s, the voice encoder (upstream) all of
# it. Reading 30 s keeps upstream's voice for every clip up to 30 s and bounds a long one's cost (an hour-long
# clip: 13 s and 1.9 GB read whole); beyond 30 s the speaker embedding averages the first 30 s only.
VOICE_SECONDS = 30.0
# SolveSettings.joint_render: consecutive chunks rendered as one S3Gen sequence, with this many silence tokens
# between them (what Turbo's decoder gets after a chunk's speech), up to upstream's longest render (40 s)
JOIN_SILENCE = 3
JOINT_MAX_TOKENS = 1000


class NoSpeechError(ValueError):
    """A call produced no speech at all (T3 sampled its stop token at once for every chunk)."""


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
    kept: int = 1  # the attempt kept (1-based): the last passing one, or the least-bad when all failed


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
    settings: CallSettings  # what the call ran with, its seed included: pass it back to reproduce the audio
    voice: Voice  # the voice it spoke in (the call's exaggeration applied)

    @property
    def seed(self) -> int | None:
        return self.settings.seed


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


@dataclass
class Job:
    """One call's work: its chunks, voice and settings."""

    chunks: list[Chunk]
    voice: Voice
    call: CallSettings
    window: int  # chunks per window (1 without continuous batching: T3 then S3Gen, chunk after chunk, as
    # sequential upstream calls consume the global random stream)


class Decoded(NamedTuple):
    tokens: list[int]  # speech tokens for S3Gen (the stop token and other special ids dropped)
    stopped: bool  # T3 sampled its stop token (False: the budget ran out)
    steps: int  # decode steps (sampled ids, special ones included)


class RenderRow(NamedTuple):
    """One chunk for S3Gen: its speech tokens in its call's voice, drawn from its own stream (None: the global RNG)."""

    tokens: list[int]
    ref: dict  # the voice's S3Gen half (Voice.gen)
    generator: torch.Generator | None
    hold_t3: bool = False  # rendered with T3's scheduler held (a streamed call's first piece on a CPU)


class Engine:
    """The models and everything shared by the calls: scheduler, render queue, tokenizer, voice cache."""

    DEC_COND_LEN = 10 * S3GEN_SR  # S3Gen's reference: the first 10 s
    VOICE_CACHE_SIZE = 8  # voices (reference clips) kept in memory

    def __init__(self, t3: T3, s3gen: S3Gen, ve: VoiceEncoder, tokenizer: EnglishTokenizer,
                 settings: EngineSettings):
        self.t3, self.s3gen, self.ve, self.tokenizer, self.settings = t3, s3gen, ve, tokenizer, settings
        self.device = torch.device(settings.device)
        self.sr = S3GEN_SR
        # Chatterbox-Flash decodes T3 by blocks: its batches, and PMI's prior computed once here
        self.flash_prior = uncond_block_prior(t3, settings.block_size) if settings.block_size else None
        self.scheduler = T3Scheduler(t3, settings.max_batch, urgent_rows=settings.urgent_rows, **self._batches())
        # Calls on the global RNG decode one at a time, so each consumes the stream in one piece (as sequential
        # upstream calls do); they run beside the scheduler's batches (the model holds no cache).
        self._global_rng_lock = threading.Lock()
        # first chunks of calls go first; chunks of calls waiting together share a batch (render_batch > 1)
        self.render_queue = RenderQueue(settings.render_slots, settings.render_batch,
                                        functools.partial(_render_rows, s3gen, settings.trailing_silence,
                                                          self.scheduler))
        self.voice_cache_dir: Path | None = None  # voices of clips also kept on disk, by content
        self._voices: OrderedDict[tuple, Voice] = OrderedDict()
        self._voice_lock = threading.Lock()
        weakref.finalize(self, self.scheduler.close)

    def _batches(self) -> dict:
        """The scheduler's batches (none of the engine itself: the scheduler outlives no engine, and holds
        none): block diffusion's for Chatterbox-Flash, else the autoregressive step the settings name."""
        t3 = self.t3
        if self.flash_prior is not None:
            prior, block_size = self.flash_prior, self.settings.block_size
            return dict(new_batch=lambda every: FlashBatch(t3, prior, block_size),
                        problem=lambda r: request_problem(t3, r))
        settings = self.settings
        return dict(new_batch=new_decode_batch(t3, settings.t3_step, settings.t3_sampler, PrefixCache(t3),
                                               settings.t3_shared_prefix_slots))

    def close(self) -> None:
        """Stop the scheduler thread and drop its batch; later calls raise."""
        self.scheduler.close()

    # ---- voices ---------------------------------------------------------------------------
    def voice_variant(self, tokenize_once: bool | None = None) -> str:
        """How a clip becomes a voice here: T3's prompt tokens from their own S3 tokenizer pass or not."""
        return "once" if (self.settings.tokenize_voice_once if tokenize_once is None else tokenize_once) else "exact"

    @property
    def enc_cond_len(self) -> int:
        """Samples (16 kHz) of the clip T3's speech prompt covers: its prompt tokens at 25 per second (English:
        150, the first 6 s; Turbo: 375, 15 s)."""
        return self.t3.cfg.speech_cond_prompt_len * S3_SR // 25

    @torch.inference_mode()
    def voice_from_wav(self, wav: np.ndarray, sr: int, *, exaggeration: float = 0.5,
                       tokenize_once: bool | None = None, min_seconds: float = 0.0,
                       loudness_lufs: float | None = None) -> Voice:
        """The voice of a mono float32 clip, computed as upstream's prepare_conditionals does.

        tokenize_once (default: the engine's setting): T3's prompt tokens (the first 6 s) are taken from the
        decoder's S3 tokenizer pass over the first 10 s instead of a second pass over 6 s.
        min_seconds: a clip not longer than this is a ValueError (Turbo: 5 s). loudness_lufs: the clip is
        first brought to this integrated loudness (Turbo: -27 LUFS), as upstream's norm_loudness.
        """
        wav_24k = resample(np.asarray(wav, dtype=np.float32), sr, S3GEN_SR)  # as librosa.load(sr=24000)
        if len(wav_24k) / S3GEN_SR <= min_seconds:
            raise ValueError(f"the reference clip is {len(wav_24k) / S3GEN_SR:.2f} s long: this model needs one "
                             f"longer than {min_seconds:g} s")
        if loudness_lufs is not None:
            wav_24k = normalize_loudness(wav_24k, S3GEN_SR, loudness_lufs)
        wav_16k = resample(wav_24k, S3GEN_SR, S3_SR)
        gen = self.s3gen.embed_ref(torch.from_numpy(wav_24k[: self.DEC_COND_LEN]).to(self.device), S3GEN_SR)
        prompt_len = self.t3.cfg.speech_cond_prompt_len
        if self.voice_variant(tokenize_once) == "once":
            covered = round(25 * min(len(wav_16k), self.enc_cond_len) / S3_SR)  # 25 tokens per second
            t3_prompt = gen["prompt_token"][:, : min(prompt_len, covered)]
        else:
            t3_prompt, _ = self.s3gen.tokenizer([torch.from_numpy(wav_16k[: self.enc_cond_len])], max_len=prompt_len)
        ve_embed = torch.from_numpy(self.ve.embeds_from_wavs([wav_16k], sample_rate=S3_SR))
        t3_cond = T3Cond(speaker_emb=ve_embed.mean(dim=0, keepdim=True),
                         cond_prompt_speech_tokens=torch.atleast_2d(t3_prompt),
                         emotion_adv=float(exaggeration) * torch.ones(1, 1, 1)).to(device=self.device)
        return Voice(t3_cond, gen)

    def voice_from_clip(self, path: str | Path, *, tokenize_once: bool | None = None, min_seconds: float = 0.0,
                        loudness_lufs: float | None = None) -> Voice:
        """The voice of the clip at `path` (its first VOICE_SECONDS), cached in memory by file (path, size,
        modification time) and, with `voice_cache_dir` set, on disk by content. min_seconds, loudness_lufs:
        the model's clip rules (`voice_from_wav`)."""
        path, variant = Path(path), self.voice_variant(tokenize_once)
        rules = dict(tokenize_once=variant == "once", min_seconds=min_seconds, loudness_lufs=loudness_lufs)
        if loudness_lufs is not None:  # a voice differs with the loudness rule; the length rule only gates
            variant = f"{variant}-{loudness_lufs:g}lufs"
        try:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, variant)
        except OSError:
            key = None  # load_audio names the problem
        with self._voice_lock:
            voice = self._voices.get(key) if key else None
            if voice is not None:
                self._voices.move_to_end(key)
                return voice
        voice = self._voice_from_disk_cache(path, variant, rules) or self.voice_from_wav(
            load_audio(path, S3GEN_SR, max_seconds=VOICE_SECONDS), S3GEN_SR, **rules)
        if key:
            with self._voice_lock:
                self._voices[key] = voice
                while len(self._voices) > self.VOICE_CACHE_SIZE:
                    self._voices.popitem(last=False)
        return voice

    def _voice_from_disk_cache(self, clip: Path, variant: str, rules: dict) -> Voice | None:
        """The cached voice of `clip` (computed and stored on a miss); None without a cache directory."""
        if self.voice_cache_dir is None:
            return None
        try:
            digest = clip_digest(clip)
        except OSError:
            return None  # load_audio names the problem
        cached = Path(self.voice_cache_dir).expanduser() / f"{digest}-{variant}.pt"
        if cached.is_file():
            return Voice.load(cached, map_location=self.device)
        voice = self.voice_from_wav(load_audio(clip, S3GEN_SR, max_seconds=VOICE_SECONDS), S3GEN_SR, **rules)
        cached.parent.mkdir(parents=True, exist_ok=True)
        voice.save(cached)
        return voice

    # ---- text -----------------------------------------------------------------------------
    def text_tokens(self, text: str, language: str | None = None) -> torch.Tensor:
        """T3's input for one chunk: (L,) ids, wrapped in the start/stop text tokens where the model's layout
        wraps them; language: the multilingual tokenizer's language id (None: the model's one tokenizer)."""
        ids = self.tokenizer.text_ids(text) if language is None else self.tokenizer.encode_chunk(text, language)
        cfg = self.t3.cfg
        max_text = self.t3.max_text_len - (2 if cfg.wrap_text else 0)
        if len(ids) > max_text:
            raise ValueError(f"a chunk of text is {len(ids)} tokens long; T3 takes at most {max_text}")
        if cfg.wrap_text:
            ids = [cfg.start_text_token, *ids, cfg.stop_text_token]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # ---- synthesis ------------------------------------------------------------------------
    def _rng_turn(self, call: CallSettings):
        """A call on the global RNG holds it for the whole call (seeding, T3 draws, decoder noise), as
        sequential upstream calls do; calls with their own streams need no turn."""
        return contextlib.nullcontext() if call.seeded_streams else self._global_rng_lock

    def _job(self, text: str, voice: Voice, call: CallSettings) -> Job:
        chunks = plan_chunks(text, call, self.tokenizer if call.language is None else None)
        if not call.seeded_streams:  # the global stream, from where the call says
            if call.seed is not None:
                torch.manual_seed(torch_seed(call.seed))
            elif call.rng_state is not None:
                torch.set_rng_state(call.rng_state)
        return Job(chunks, voice, call, window=self.settings.max_batch if call.continuous_batching else 1)

    @torch.inference_mode()
    def synthesize(self, text: str, voice: Voice, call: CallSettings, *, progress: bool | None = None,
                   trim: bool | None = None) -> SynthesisResult:
        """The whole audio of `text` with per-chunk metadata. trim (default: for several chunks): remove DC
        and cut each chunk's leading and trailing silence before joining."""
        with self._rng_turn(call):
            job = self._job(text, voice, call)
            clock = Clock()
            results = list(chunk_results(self, job, clock, ahead=self.settings.decode_ahead,
                                         progress=len(job.chunks) >= 4 if progress is None else progress))
        audio, joins = assemble(results, self.sr, trim=len(results) > 1 if trim is None else trim)
        if not len(audio):
            raise _no_speech(call)
        clock.stages["total_s"] = clock.elapsed()
        return SynthesisResult(audio, self.sr, results, joins, clock.stages, call, voice)

    def stream(self, text: str, voice: Voice, call: CallSettings) -> Iterator[Piece]:
        """The audio of `text` piece by piece as soon as each is ready; together exactly what `synthesize`
        (trim=True) gives where both render the same sequences (under joint_render the first chunk renders
        alone here, as its audio is wanted first; later windows render jointly as in synthesize). The first
        chunk is cut to at most `call.first_chunk_chars` and decoded alone; with
        `call.token_streaming` (and continuous batching) its audio comes every few tokens, otherwise when the
        chunk is done; its first piece renders with T3 held where `hold_t3_for_first_piece` (CPUs, CFM). The
        next window's T3 is decoded while the current one is rendered."""
        with self._rng_turn(call), torch.inference_mode():
            job = self._job(text, voice, call)
            job.chunks = short_first(job.chunks, call.first_chunk_chars)
            clock = Clock()
            joiner = StreamJoiner(self.sr, clock)
            first, prefetched = 0, None
            if call.token_streaming is not None and call.continuous_batching:
                first, rest = 1, _windows(job, False, 1)
                # Where T3 decodes ahead (GPUs), the next window joins the batch now, behind the urgent first
                # chunk; on a CPU it would slow the first chunk's steps, so it waits for them.
                if self.settings.decode_ahead and rest:
                    prefetched = T3Work(self, job, rest[0], 0)
                try:
                    yield from stream_chunk_tokens(self, job, 0, joiner, clock)
                except BaseException:  # a consumer that stops early leaves nothing decoding for it
                    if prefetched is not None:
                        prefetched.cancel()
                    raise
            results = chunk_results(self, job, clock, first_alone=first == 0, start=first, ahead=True,
                                    prefetched=prefetched)
            yield from streamed_pieces(results, self.sr, clock, joiner)
            if joiner.pending is None:  # nothing was ever spoken
                raise _no_speech(call)


def plan_chunks(text: str, call: CallSettings, tokenizer: EnglishTokenizer | None = None) -> list[Chunk]:
    """The chunks `text` is spoken in, validated: a clear ValueError for text that can't be spoken (with
    `tokenizer`, also for letters it has no token for; symbols it lacks are dropped with a warning)."""
    check_text(text)
    if call.normalize_text and call.language in (None, "en"):
        text = normalize_english(text, flash=call.flash is not None)
    if tokenizer is not None:
        text = check_speakable(tokenizer, text)
    if not call.chunk_short_text and len(text) <= call.max_chars:
        return [Chunk(text, "end")]  # upstream speaks a short text in one call, untouched
    return pack_chunks(text, call.max_chars, language=sentence_language(call.language or "en"), rows=call.chunk_rows)


def _no_speech(call: CallSettings) -> NoSpeechError:
    s = call.sampling
    return NoSpeechError(
        "no speech: T3 sampled its stop token at once for every chunk (nothing to render); with "
        f"repetition_penalty={s.repetition_penalty:g}, temperature={s.temperature:g}, min_p={s.min_p:g}, "
        f"top_p={s.top_p:g} the sampling may leave nothing but the stop token: try the defaults")


def short_first(chunks: list[Chunk], max_chars: int) -> list[Chunk]:
    """The chunks with the first one re-packed into pieces of at most max_chars."""
    if len(chunks[0].text) <= max_chars:
        return chunks
    head = pack_chunks(chunks[0].text, max_chars)
    head[-1] = Chunk(head[-1].text, chunks[0].kind)
    return head + chunks[1:]


def _generator(job: Job, index: int, attempt: int, device: torch.device, stage: str) -> torch.Generator | None:
    """The random stream of one chunk attempt's T3 sampling (stage "t3") or S3Gen's noise (flow decoder, then
    vocoder source: "s3gen"); None for calls on the global RNG."""
    if not job.call.seeded_streams:
        return None
    return torch.Generator(device=device).manual_seed(stream_seed(job.call.seed, stage, index, attempt))


def _budget(job: Job, text: str) -> int:
    if job.call.budget_factor is None:
        return job.call.max_new_tokens
    return token_budget(text, job.call.max_new_tokens, job.call.budget_factor)


def _request(engine: Engine, job: Job, index: int, attempt: int) -> DecodeRequest | FlashRequest:
    text = job.chunks[index].text
    if job.call.flash is not None:  # the reference's budget: 6 speech tokens per text token, at least 300
        tokens = engine.text_tokens(text)
        budget = min(_budget(job, text), max(6 * len(tokens), 300))
        return FlashRequest(job.voice.t3, tokens, job.call.flash, max_new_tokens=budget,
                            generator=_generator(job, index, attempt, engine.device, "t3"))
    return DecodeRequest(job.voice.t3, engine.text_tokens(text, job.call.language), job.call.sampling,
                         max_new_tokens=_budget(job, text), generator=_generator(job, index, attempt, engine.device, "t3"),
                         alignment_guard=engine.settings.alignment_guard)


class T3Work:
    """The T3 decodes of chunks `indices`, one attempt each: with continuous batching they are submitted to
    the engine's scheduler (shared with whatever else is decoding) and this returns at once; otherwise they
    are decoded here, one after another (on the global random stream, as upstream's calls)."""

    def __init__(self, engine: Engine, job: Job, indices: list[int], attempt: int):
        self.engine, self.indices = engine, indices
        self.start = self.finished = time.perf_counter()
        self.futures: dict[int, Future] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        requests = {i: _request(engine, job, i, attempt) for i in indices}
        if job.call.continuous_batching:
            # submitted as one group: the scheduler thread could otherwise admit the first chunk before the
            # others and start the batch smaller by a timing of threads, and a bf16/int8 row rounds by its batch's
            # shape, so a seeded call would not repeat itself on a loaded machine
            with engine.scheduler.paused():
                for i, request in requests.items():  # a call's first chunk is what its caller waits for first
                    self.futures[i] = engine.scheduler.submit(request, urgent=i == 0)
                    self.futures[i].add_done_callback(self._stamp)
        else:
            self.outputs = {i: _decode_alone(engine, r) for i, r in requests.items()}
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
        return {i: _decoded(self.engine, outputs[i].tolist()) for i in self.indices}

    def cancel(self) -> None:
        for future in self.futures.values():
            future.cancel()


def _decode_alone(engine: Engine, r: DecodeRequest | FlashRequest) -> torch.Tensor:
    """One request's tokens decoded here (on its generator, else the global RNG, as upstream)."""
    if isinstance(r, FlashRequest):
        return generate_block_diffusion(engine.t3, [r], block_size=engine.settings.block_size,
                                        prior=engine.flash_prior)[0]
    return decode_alone(engine.t3, r)


def _decoded(engine: Engine, tokens: list[int]) -> Decoded:
    stop, vocab = engine.t3.cfg.stop_speech_token, engine.s3gen.vocab_size
    return Decoded([t for t in tokens if t < vocab], bool(tokens) and tokens[-1] == stop, len(tokens))


def _render_rows(s3gen: S3Gen, trailing_silence: int, scheduler: T3Scheduler, key: tuple[SolveSettings, bool],
                 rows: list[RenderRow]) -> list[np.ndarray]:
    """The render queue's render: rows of any calls with one solve (key: the solve, and whether the rows have
    their own streams) as one S3Gen batch, each row in its own voice; with T3's `scheduler` held while it
    runs if a row asks (the hold starts when the render does, not while the row waits in line)."""
    solve, seeded = key
    generators = [r.generator for r in rows] if seeded else None
    with scheduler.held() if any(r.hold_t3 for r in rows) else contextlib.nullcontext():
        return s3gen.render([r.tokens for r in rows], [r.ref for r in rows], generators, batch=len(rows),
                            n_timesteps=solve.n_timesteps, solver=solve.solver, schedule=solve.schedule,
                            sway_coef=solve.sway_coef, prompt_seconds=solve.prompt_seconds,
                            f0_smoothing=F0Smoothing() if solve.f0_smoothing else None,
                            trailing_silence=trailing_silence)


def _render_group(engine: Engine, job: Job, tokens: list[list[int]], generators: list[torch.Generator] | None,
                  urgent: bool, hold_t3: bool = False) -> list[np.ndarray]:
    """S3Gen for chunks of one call, in the call's voice with the call's solve, through the engine's render queue:
    batched with other calls' chunks waiting at the same time with the same solve, up to `render_batch` rows;
    hold_t3: T3's scheduler held while they render (RenderRow.hold_t3)."""
    rows = [RenderRow(t, job.voice.gen, g, hold_t3) for t, g in zip(tokens, generators or [None] * len(tokens))]
    return engine.render_queue.render((job.call.solve, generators is not None), rows, urgent=urgent)


def _render(engine: Engine, job: Job, tokens: dict[int, list[int]], attempts: dict[int, int]) -> dict[int, np.ndarray]:
    """S3Gen for chunks {index: tokens}, each with the random stream of its attempt (under joint_render, runs of
    consecutive chunks as one sequence on its first chunk's stream, each chunk's audio cut out of it),
    submitted `render_batch` sequences at a time. Submissions take turns across calls in the render queue batch by batch, so a call's first
    chunk waits for one batch of other calls' later chunks at most, not for their whole window."""
    wavs = {i: np.zeros(0, dtype=np.float32) for i, t in tokens.items() if not t}
    sequences, step = _sequences(tokens, job.call.solve.joint_render), engine.settings.render_batch
    spt = engine.s3gen.samples_per_token
    for k in range(0, len(sequences), step):
        group = sequences[k : k + step]
        generators = None
        if job.call.seeded_streams:  # a sequence draws from its first chunk's stream
            generators = [_generator(job, seq[0], attempts[seq[0]], engine.device, "s3gen") for seq in group]
        joined = [[t for j, i in enumerate(seq) for t in ([SILENCE_TOKEN] * JOIN_SILENCE if j else []) + tokens[i]]
                  for seq in group]
        rendered = _render_group(engine, job, joined, generators, urgent=any(0 in seq for seq in group))
        for seq, wav in zip(group, rendered):
            starts = np.cumsum([0] + [len(tokens[i]) + JOIN_SILENCE for i in seq[:-1]]) * spt
            ends = [*starts[1:], len(wav)]  # a chunk's audio runs to the next one's start (or the end)
            wavs.update((i, wav[a:b]) for i, a, b in zip(seq, starts, ends))
    if engine.settings.drop_final_token:
        wavs = {i: wav[: _voiced(len(tokens[i])) * spt] for i, wav in wavs.items()}
    return wavs


def _sequences(tokens: dict[int, list[int]], joint: bool) -> list[list[int]]:
    """The chunks (indices, in order) of each S3Gen sequence: one chunk each, or (SolveSettings.joint_render)
    runs of consecutive chunks up to JOINT_MAX_TOKENS, spoken with JOIN_SILENCE silence tokens between."""
    sequences: list[list[int]] = []
    size = 0
    for i in sorted(i for i, t in tokens.items() if t):
        n = len(tokens[i])
        if joint and sequences and sequences[-1][-1] == i - 1 and size + JOIN_SILENCE + n <= JOINT_MAX_TOKENS:
            sequences[-1].append(i)
            size += JOIN_SILENCE + n
        else:
            sequences.append([i])
            size = n
    return sequences


def _voiced(n_tokens: int) -> int:
    """Tokens of a finished chunk whose audio is kept under EngineSettings.drop_final_token (at least one)."""
    return max(1, n_tokens - 1) if n_tokens else 0


def _similarity(engine: Engine, job: Job, wav: np.ndarray) -> float | None:
    if len(wav) < engine.sr // 2:  # too short for a meaningful x-vector
        return None
    wav_16k = sinc_resample(torch.from_numpy(wav).to(engine.device)[None], engine.sr, S3_SR)
    return speaker_similarity(engine.s3gen.speaker_encoder.inference(wav_16k), job.voice.gen["embedding"])


@dataclass
class _Attempt:
    number: int  # 0-based
    decoded: Decoded
    failure: Failure | None = None
    audio: np.ndarray | None = None  # rendered (attempts that failed their token check are not)


def _window(engine: Engine, job: Job, indices: list[int], clock: Clock,
            t3_first: T3Work | None = None) -> list[ChunkResult]:
    """Generate the chunks `indices`, retrying failed ones up to max_retries; a chunk whose every attempt
    failed keeps the least-bad one by the checks' scores. `t3_first`: their first T3 attempt if submitted."""
    limits, checking = job.call.limits, job.call.max_retries > 0
    history: dict[int, list[_Attempt]] = {i: [] for i in indices}
    done: dict[int, _Attempt] = {}
    pending, attempt = list(indices), 0
    while pending:
        work = t3_first if attempt == 0 and t3_first is not None else T3Work(engine, job, pending, attempt)
        decoded = work.result(clock)
        last_try, retry, render = attempt >= job.call.max_retries, [], {}
        for i in pending:
            a = _Attempt(attempt, decoded[i])
            history[i].append(a)
            a.failure = token_failure(a.decoded.tokens, job.chunks[i].text, a.decoded.stopped, limits) if checking else None
            if a.failure and not last_try:
                retry.append(i)
            else:
                render[i] = a
        start = time.perf_counter()
        if render:
            for i, wav in _render(engine, job, {i: a.decoded.tokens for i, a in render.items()},
                                  {i: a.number for i, a in render.items()}).items():
                render[i].audio = wav
        clock.add("s3gen_s", time.perf_counter() - start)
        for i, a in render.items():
            if checking and a.failure is None:
                a.failure = audio_failure(a.audio, engine.sr, _similarity(engine, job, a.audio), limits)
            if a.failure and not last_try:
                retry.append(i)
            else:
                done[i] = a
        pending = sorted(retry)
        attempt += 1
    best = {i: min(history[i], key=lambda a: a.failure.badness if a.failure else 0.0) for i in indices}
    unrendered = {i: a for i, a in best.items() if a.audio is None}  # a token-check failure kept after all
    if unrendered:
        for i, wav in _render(engine, job, {i: a.decoded.tokens for i, a in unrendered.items()},
                              {i: a.number for i, a in unrendered.items()}).items():
            unrendered[i].audio = wav
    results = []
    for i in indices:
        kept = best[i] if done[i].failure else done[i]
        failures = [f"attempt {a.number + 1}: {a.failure.reason}" for a in history[i] if a.failure]
        if kept.failure:
            failures.append(f"kept attempt {kept.number + 1} of {len(history[i])}: every attempt failed, "
                            f"it failed least ({kept.failure.reason})")
            log.warning("chunk %d: %s", i, "; ".join(failures))
        results.append(ChunkResult(i, job.chunks[i].text, torch.tensor(kept.decoded.tokens, dtype=torch.long),
                                   kept.audio, len(history[i]), failures, job.chunks[i].kind, kept.decoded.steps,
                                   kept.number + 1))
    return results


def _windows(job: Job, first_alone: bool, start: int = 0) -> list[list[int]]:
    indices = list(range(start, len(job.chunks)))
    head = [indices[:1]] if first_alone and len(indices) > 1 else []
    rest = indices[len(head):]
    return head + [rest[k : k + job.window] for k in range(0, len(rest), job.window)]


def chunk_results(engine: Engine, job: Job, clock: Clock, *, first_alone: bool = False, start: int = 0,
                  ahead: bool = False, progress: bool = False, prefetched: T3Work | None = None) -> Iterator[ChunkResult]:
    """The results of chunks start, start + 1, ..., in order, window by window.

    ahead: submit the next window's T3 (first attempts) while this window is rendered, so that T3 and S3Gen
    run side by side (continuous batching only: the global random stream must be consumed in order).
    prefetched: the first window's T3 work, already submitted (with `ahead`). Retries are submitted when needed.
    """
    windows = _windows(job, first_alone, start)
    bar = tqdm(total=len(job.chunks) - start, desc="Chunks", unit="chunk", disable=not progress or None, leave=False)
    ahead = ahead and job.call.continuous_batching
    submitted = [prefetched or T3Work(engine, job, windows[0], 0)] if ahead and windows else []
    try:
        for k, window in enumerate(windows):
            if ahead and k + 1 < len(windows):
                submitted.append(T3Work(engine, job, windows[k + 1], 0))
            results = _window(engine, job, window, clock, t3_first=submitted.pop(0) if ahead else None)
            bar.update(len(results))
            yield from results
    finally:
        for work in submitted:  # a consumer that stops early leaves nothing decoding for it
            work.cancel()
        bar.close()


def _edges(audio: np.ndarray, sr: int, trim: bool) -> np.ndarray:
    return trim_edges(remove_dc(audio), sr) if trim else audio


def assemble(results: list[ChunkResult], sr: int, trim: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The chunks' audio joined with the pause their boundary calls for (a crossfade inside a sentence);
    trim: remove DC and cut each chunk's leading and trailing silence and noise first."""
    return assemble_audio([r.audio for r in results], [r.kind for r in results], sr, trim)


def assemble_audio(audio: list[np.ndarray], kinds: list[str], sr: int,
                   trim: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`assemble` of chunks rendered elsewhere (book jobs): each chunk's (N,) audio and the kind of the
    boundary after it (text.chunking.Chunk.kind); silent chunks are left out."""
    spoken = [(wav, kind) for wav, kind in zip(audio, kinds, strict=True) if len(wav)]
    if not spoken:
        return np.zeros(0, dtype=np.float32), []
    pieces = [_edges(wav, sr, trim) for wav, _ in spoken]
    return join_chunks(pieces, [DEFAULT_PAUSES_S.get(kind, 0.0) for _, kind in spoken[:-1]], sr)


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
            piece = joiner.chunk(_edges(result.audio, sr, trim=True), result.index)
            joiner.end_chunk(result.kind)
            if piece is not None:
                yield piece
    last = joiner.finish()
    if last is not None:
        yield last


def stream_chunk_tokens(engine: Engine, job: Job, index: int, joiner: StreamJoiner, clock: Clock) -> Iterator[Piece]:
    """Chunk `index` of a continuously batched job, streamed as T3 samples it (job.call.token_streaming):
    one attempt, as its audio is out before its tokens are complete; a failed token check is logged."""
    streaming, chunk = job.call.token_streaming, job.chunks[index]
    updates: queue.Queue = queue.Queue()  # token lists as they come, then the finished Future
    submitted, ended = time.perf_counter(), []
    future = engine.scheduler.submit(_request(engine, job, index, 0), on_tokens=lambda tokens: updates.put(list(tokens)),
                                     urgent=index == 0)
    future.add_done_callback(lambda f: (ended.append(time.perf_counter()), updates.put(f)))
    noise_gen = _generator(job, index, 0, engine.device, "s3gen")
    spt = engine.s3gen.samples_per_token
    overlap = int(engine.sr * streaming.overlap_ms / 1000)
    decoded = Decoded([], False, 0)
    emitted, done, first, size = 0, False, True, streaming.first_tokens
    try:
        while not done:
            item = updates.get()
            done = isinstance(item, Future)
            if done:
                clock.add("t3_s", ended[0] - submitted)
                item = item.result().tolist()  # raises what the decode raised
            decoded = _decoded(engine, item)
            tokens = decoded.tokens
            settled = len(tokens) - streaming.lookahead  # tokens with their lookahead come
            if done:
                settled = _voiced(len(tokens)) if engine.settings.drop_final_token else len(tokens)
            # every piece that ends by `settled`, and once the chunk is done its rest: pieces end at fixed
            # token counts whatever each update brings
            while emitted < settled and (done or emitted + size <= settled):
                ready = min(emitted + size, settled)
                start = max(0, emitted - streaming.context)
                stop = len(tokens) if ready == settled and done else ready + streaming.lookahead
                begin = time.perf_counter()
                # context + new + lookahead, each render drawing on from the chunk's stream
                wav = _render_group(engine, job, [tokens[start:stop]], [noise_gen], urgent=index == 0,
                                    hold_t3=first and index == 0 and engine.settings.hold_t3_for_first_piece)[0]
                clock.add("s3gen_s", time.perf_counter() - begin)
                lead = 0 if first else min(overlap, (emitted - start) * spt)
                audio = wav[(emitted - start) * spt - lead : (ready - start) * spt]
                piece = joiner.chunk(audio, index) if first else joiner.more(audio, lead, index)
                size = streaming.piece_tokens if first else min(size * streaming.growth, streaming.max_piece_tokens)
                first, emitted = False, ready
                if piece is not None:
                    yield piece
    finally:
        future.cancel()  # a consumer that stops early stops the decode (no-op once it is done)
    failure = token_failure(decoded.tokens, chunk.text, decoded.stopped, job.call.limits) if job.call.max_retries else None
    if failure:
        log.warning("streamed chunk %d failed its token check (%s); its audio was already out: not retried",
                    index, failure.reason)
    joiner.end_chunk(chunk.kind)
