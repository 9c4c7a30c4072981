"""The public API: a drop-in for upstream's `chatterbox.tts.ChatterboxTTS`.

    tts = ChatterboxTTS.from_pretrained(device="cuda")          # preset="fast" (default), "fastest", "exact"
    wav = tts.generate("Hello there.", audio_prompt_path="voice.wav")  # (1, N) float32 at tts.sr
    result = tts.synthesize(chapter_text)                        # any length, with per-chunk metadata
    for piece in tts.generate_stream(chapter_text): ...          # audio as soon as each chunk is ready

Per chunk: text -> punc_norm -> tokenizer -> T3 (speech tokens, 25 Hz) -> S3Gen flow (mel, 50 Hz)
-> HiFT (24 kHz audio); chunks are joined (pipeline.py), then watermarked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .audio.io import load_audio, resample
from .config import ChatterboxConfig
from .checkpoint import (REPO_ID, TURBO_REPO_ID, CheckpointError, check_checkpoint_dir, download_checkpoint,
                         download_file, load_weights, read_safetensors, skip_weight_init)
from .devices import resolve_device
from .engine.quantize import reduce_precision_
from .engine.scheduler import T3Scheduler
from .engine.sampling import SAMPLING_RANGES, check_range
from .models.hift import F0Smoothing
from .models.s3gen import MEANFLOW_FILE, S3GEN_SR, S3_SR, S3Gen, meanflow_config, trim_reference
from .models.t3 import T3, T3Cond
from .models.voice_encoder import VoiceEncoder
from .pipeline import (Job, Piece, StreamJoiner, SynthesisResult, Clock, assemble, chunk_results,
                       stream_chunk_tokens, streamed_pieces)
from .presets import DEFAULT_PRESET, EXACT, Preset, get_preset
from .random_checkpoint import RANDOM_MARKER
from .text.chunking import Chunk, check_text, pack_chunks
from .text.english import normalize_english
from .text.normalize import punc_norm
from .text.tokenizer import EnglishTokenizer
from .watermark import Watermarker

log = logging.getLogger(__name__)

DECODERS = ("cfm", "meanflow")


@dataclass
class Conditionals:
    """A voice: T3's conditionals and S3Gen's reference (prompt tokens, prompt mel, x-vector).

    Saved and loaded in upstream's `conds.pt` format: {"t3": T3Cond fields, "gen": dict}.
    """

    t3: T3Cond
    gen: dict

    def to(self, device) -> Conditionals:
        self.t3 = self.t3.to(device=device)
        self.gen = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.gen.items()}
        return self

    def save(self, path: str | Path) -> None:
        torch.save({"t3": dict(self.t3.__dict__), "gen": self.gen}, path)

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> Conditionals:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
            return cls(T3Cond(**data["t3"]), dict(data["gen"]))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a Chatterbox voice file (conds.pt): {exc}") from exc


class ChatterboxTTS:
    ENC_COND_LEN = 6 * S3_SR  # T3's speech prompt: the first 6 s of the clip
    DEC_COND_LEN = 10 * S3GEN_SR  # S3Gen's reference: the first 10 s
    VOICE_CACHE_SIZE = 8  # voices (reference clips) kept in memory
    MAX_CHARS = 300  # longest chunk of text one T3 call speaks
    FIRST_CHUNK_CHARS = 100  # generate_stream: the first chunk, decoded alone, is at most this long

    def __init__(self, t3: T3, s3gen: S3Gen, ve: VoiceEncoder, tokenizer: EnglishTokenizer, device,
                 conds: Conditionals | None = None, preset: str = DEFAULT_PRESET, watermark: bool = True):
        self.preset: Preset = get_preset(preset, device)
        self.sr = S3GEN_SR
        self.t3, self.s3gen, self.ve, self.tokenizer = t3, s3gen, ve, tokenizer
        self.device = torch.device(device)
        self.conds = conds
        self.watermark = watermark
        self._watermarker = Watermarker() if watermark else None
        self.random_weights = False  # set by from_local for init-random checkpoints
        self.t3_lock = threading.Lock()  # one KV cache: one T3 decode (or batch) at a time
        # chunks per T3 batch: concurrent calls share the batches (continuous batching)
        self.max_batch = 8 if self.device.type == "cpu" else 32
        self.t3_scheduler = T3Scheduler(t3, self.max_batch, self.t3_lock)
        self._voice_lock = threading.RLock()  # the current voice and the voice cache, across threads
        # S3Gen renders at once, across calls: on CPU one (concurrent renders only split the cores and add
        # memory); on CUDA two (one's host work overlaps the other's kernels)
        self.render_slots = threading.Semaphore(1 if self.device.type == "cpu" else 2)
        self.voice_cache_dir: str | Path | None = None  # set to keep voices on disk (prepare_conditionals)
        self._voices: OrderedDict[tuple, Conditionals] = OrderedDict()

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", preset: str = DEFAULT_PRESET,
                   watermark: bool = True, *, decoder: str = "cfm",
                   meanflow_file: str | Path | None = None) -> ChatterboxTTS:
        """Load a checkpoint directory in the official layout.

        decoder: "cfm", the base model's flow decoder (10 CFM steps upstream), or "meanflow", Chatterbox-Turbo's
        distilled decoder (2 steps, no CFG) on this model's speech tokens (same vocabulary): `meanflow_file`,
        default ckpt_dir/s3gen_meanflow.safetensors. The presets' solver settings apply to "cfm" only.
        """
        device = resolve_device(device)
        settings = get_preset(preset, device)
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        ckpt_dir = check_checkpoint_dir(ckpt_dir)
        random_weights = (ckpt_dir / RANDOM_MARKER).is_file()
        if random_weights:
            log.warning("%s holds RANDOM weights (faster-chatterbox init-random): the audio will be noise", ckpt_dir)
        # The official checkpoint has no config.json (its sizes are the defaults); init-random --small writes one.
        config_path = ckpt_dir / "config.json"
        config = ChatterboxConfig.load(config_path) if config_path.is_file() else ChatterboxConfig()
        tokenizer = EnglishTokenizer(ckpt_dir / "tokenizer.json")

        with skip_weight_init():
            modules = config.build_modules()
        for name, module in modules.items():
            load_weights(module, read_safetensors(ckpt_dir / name), ckpt_dir / name,
                         ignore_unexpected=name == "s3gen.safetensors")  # upstream loads it non-strictly
        ve, t3, s3gen = modules["ve.safetensors"], modules["t3_cfg.safetensors"], modules["s3gen.safetensors"]
        if tokenizer.vocab_size > t3.cfg.text_tokens_dict_size:
            raise CheckpointError(f"{ckpt_dir / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but T3 "
                                  f"embeds only {t3.cfg.text_tokens_dict_size}")
        s3gen.mel2wav.fold_weight_norm()
        if decoder == "meanflow":
            s3gen = _meanflow_decoder(Path(meanflow_file or ckpt_dir / MEANFLOW_FILE), config, s3gen)
        if settings.s3gen_dtype != torch.float32:
            s3gen.set_decoder_dtype(settings.s3gen_dtype)
        reduce_precision_(t3, settings.t3_precision)
        if settings.t3_precision != "fp32" and torch.device(device).type == "cpu":
            # bf16 attention is slow on CPU: a float32 KV cache makes a decode step 8-25% faster
            # (BENCHMARKS.md, T3 precision)
            t3.tfmr.kv_dtype = torch.float32

        conds = None
        if (ckpt_dir / "conds.pt").is_file():
            conds = Conditionals.load(ckpt_dir / "conds.pt").to(device)
        tts = cls(t3.to(device).eval(), s3gen.to(device).eval(), ve.to(device).eval(), tokenizer, device,
                  conds=conds, preset=preset, watermark=watermark)
        tts.random_weights = random_weights
        return tts

    @classmethod
    def from_pretrained(cls, device: str = "auto", preset: str = DEFAULT_PRESET, watermark: bool = True, *,
                        decoder: str = "cfm", repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> ChatterboxTTS:
        """Download (or find in the Hugging Face cache) the official files, then `from_local`; decoder="meanflow"
        also fetches Turbo's s3gen_meanflow.safetensors from ResembleAI/chatterbox-turbo."""
        get_preset(preset, resolve_device(device))  # fail before a multi-GB download
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir)
        meanflow = download_file(MEANFLOW_FILE, TURBO_REPO_ID, cache_dir=cache_dir) if decoder == "meanflow" else None
        return cls.from_local(ckpt_dir, device=device, preset=preset, watermark=watermark, decoder=decoder,
                              meanflow_file=meanflow)

    # ---- voices ---------------------------------------------------------------------------
    def prepare_conditionals(self, wav_fpath: str | Path, exaggeration: float = 0.5) -> None:
        """Make the voice of a reference clip (ideally 10 s or more of clean speech) the current voice.

        Voices are cached in memory by file (path, size, modification time): a clip used again costs nothing;
        with `voice_cache_dir` set, also on disk by the clip's content, in upstream's conds.pt format.
        """
        check_range("exaggeration", exaggeration, 0.0)
        with self._voice_lock:
            self.conds = _with_exaggeration(self._voice(Path(wav_fpath), exaggeration), exaggeration, self.device)

    def _voice(self, path: Path, exaggeration: float) -> Conditionals:
        """The voice of clip `path`, from the memory cache, the disk cache, or computed (and cached)."""
        try:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None  # load_audio names the problem
        voice = self._voices.get(key) if key else None
        if voice is None:
            voice = self._voice_from_disk_cache(path) or self.conditionals_from_wav(
                load_audio(path, S3GEN_SR), S3GEN_SR, exaggeration)
            self._voices[key] = voice
            while len(self._voices) > self.VOICE_CACHE_SIZE:
                self._voices.popitem(last=False)
        self._voices.move_to_end(key)
        return voice

    def _voice_from_disk_cache(self, clip: Path) -> Conditionals | None:
        """The cached voice of `clip` (computed and stored on a miss); None without a cache directory."""
        if self.voice_cache_dir is None:
            return None
        try:
            digest = hashlib.sha256(clip.read_bytes()).hexdigest()[:32]
        except OSError:
            return None  # load_audio names the problem
        variant = "once" if self.preset.tokenize_voice_once else "exact"  # the T3 prompt differs between them
        cached = Path(self.voice_cache_dir).expanduser() / f"{digest}-{variant}.pt"
        if cached.is_file():
            return Conditionals.load(cached, map_location=self.device).to(self.device)
        voice = self.conditionals_from_wav(load_audio(clip, S3GEN_SR), S3GEN_SR)
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        voice.save(staging)
        os.replace(staging, cached)  # whole or not at all
        return voice

    @torch.inference_mode()
    def conditionals_from_wav(self, wav: np.ndarray, sr: int, exaggeration: float = 0.5) -> Conditionals:
        """The voice of a mono float32 clip, computed as upstream's prepare_conditionals does.

        The `fastest` preset runs the S3 tokenizer once: T3's prompt tokens (the first 6 s) are taken from
        the decoder's pass over the first 10 s instead of a second pass over 6 s.
        """
        check_range("exaggeration", exaggeration, 0.0)
        wav_24k = resample(np.asarray(wav, dtype=np.float32), sr, S3GEN_SR)  # as librosa.load(sr=24000)
        wav_16k = resample(wav_24k, S3GEN_SR, S3_SR)
        gen = self.s3gen.embed_ref(torch.from_numpy(wav_24k[: self.DEC_COND_LEN]).to(self.device), S3GEN_SR)

        prompt_len = self.t3.cfg.speech_cond_prompt_len
        if self.preset.tokenize_voice_once:
            six_seconds = round(25 * min(len(wav_16k), self.ENC_COND_LEN) / S3_SR)  # 25 tokens per second
            t3_prompt = gen["prompt_token"][:, : min(prompt_len, six_seconds)]
        else:
            t3_prompt, _ = self.s3gen.tokenizer([torch.from_numpy(wav_16k[: self.ENC_COND_LEN])], max_len=prompt_len)
        ve_embed = torch.from_numpy(self.ve.embeds_from_wavs([wav_16k], sample_rate=S3_SR))
        t3_cond = T3Cond(
            speaker_emb=ve_embed.mean(dim=0, keepdim=True),
            cond_prompt_speech_tokens=torch.atleast_2d(t3_prompt),
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_cond, gen)

    def text_tokens(self, text: str) -> torch.Tensor:
        """T3's input for one chunk: (L,) ids wrapped in the start/stop text tokens."""
        ids = self.tokenizer.encode(punc_norm(text))
        max_text = self.t3.cfg.max_text_tokens - 2
        if len(ids) > max_text:
            raise ValueError(f"a chunk of text is {len(ids)} tokens long; T3 takes at most {max_text}")
        return torch.tensor([self.t3.cfg.start_text_token, *ids, self.t3.cfg.stop_text_token],
                            dtype=torch.long, device=self.device)

    # ---- synthesis ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.05, top_p: float = 1.0,
                 audio_prompt_path: str | Path | None = None, exaggeration: float = 0.5, cfg_weight: float = 0.5,
                 temperature: float = 0.8, *, seed: int | None = None, max_new_tokens: int = 1000,
                 n_timesteps: int | None = None, watermark: bool | None = None, fast_inference: bool = True,
                 optimize_quality: bool = False) -> torch.Tensor:
        """Speak `text` (any length); returns a (1, N) float32 tensor at `self.sr` (24 kHz).

        Upstream's arguments, plus:
        seed: if given, the call is reproducible (exact preset: torch.manual_seed(seed) first, as upstream
            users do; batched presets: every chunk's random streams derive from it, the global RNG is left
            alone, so the output is the same with other calls running; None: one draw of the global RNG).
        max_new_tokens: each chunk's speech-token cap (25 tokens per second of speech; upstream: 1000).
        n_timesteps: flow-matching steps of the S3Gen decoder (default: the preset's; upstream: 10).
        watermark: override the instance's watermark setting for this call.
        fast_inference: False runs upstream's algorithms for this call (one chunk after another on the
            global RNG, Euler 10 steps, no text normalisation) on the weights as loaded (load with
            preset="exact" for float32).
        optimize_quality: smooth the vocoder's F0 (median + Gaussian) and post-process the audio (high-pass,
            de-click, edge trim, loudness to -19 LUFS, peak limit).
        Texts longer than MAX_CHARS are split into chunks (see `synthesize` for the metadata).
        """
        return torch.from_numpy(self.synthesize(
            text, repetition_penalty=repetition_penalty, min_p=min_p, top_p=top_p,
            audio_prompt_path=audio_prompt_path, exaggeration=exaggeration, cfg_weight=cfg_weight,
            temperature=temperature, seed=seed, max_new_tokens=max_new_tokens, n_timesteps=n_timesteps,
            watermark=watermark, fast_inference=fast_inference, optimize_quality=optimize_quality,
        ).audio).unsqueeze(0)

    @torch.inference_mode()
    def synthesize(self, text: str, *, progress: bool | None = None, **kwargs) -> SynthesisResult:
        """`generate`'s work with its metadata: the audio, every chunk's text, tokens, attempts and failure
        reasons, the join positions and stage timings. Keyword arguments as `generate`, plus
        max_retries (default: the preset's; 0 on random-weight checkpoints, whose audio is noise),
        token_budget_factor (a chunk's token budget in multiples of its expected length; exact: None,
        the cap alone), max_chars (chunk length), progress (a progress bar; default: for 4+ chunks)."""
        job, options = self._job(text, **kwargs)
        clock = Clock()
        results = list(chunk_results(self, job, clock, overlap=self.device.type == "cuda",
                                     progress=len(job.chunks) >= 4 if progress is None else progress))
        audio, joins = assemble(results, self.sr, trim=len(results) > 1 or options["optimize_quality"])
        audio = self._finish(audio, options)
        clock.stages["total_s"] = clock.elapsed()
        return SynthesisResult(audio, self.sr, results, joins, clock.stages)

    def generate_stream(self, text: str, *, token_streaming: bool = True, **kwargs) -> Iterator[Piece]:
        """Yield the audio of `text` piece by piece as soon as each is ready (arguments as `generate`).

        The first chunk is cut to at most FIRST_CHUNK_CHARS (at a sentence, else a clause or word boundary)
        and decoded alone; with token_streaming (batched presets) its audio comes every 50 tokens, the
        first after 25 (pipeline.TokenStreaming), otherwise when the chunk is done. The T3 of each next
        window of chunks is decoded (by the model's T3 scheduler) while the current one is rendered.
        Concatenating the pieces' audio gives the whole output. Each piece carries its position and
        readiness time.
        """
        job, options = self._job(text, **kwargs)
        job.chunks = _short_first(job.chunks, self.FIRST_CHUNK_CHARS)
        clock = Clock()
        joiner = StreamJoiner(self.sr, clock)
        with torch.inference_mode():
            first = 0
            if token_streaming and job.batched:
                first = 1
                for piece in stream_chunk_tokens(self, job, 0, joiner, clock):
                    piece.audio = self._finish(piece.audio, options)
                    yield piece
            results = chunk_results(self, job, clock, first_alone=first == 0, start=first, overlap=True)
            for piece in streamed_pieces(results, self.sr, clock, joiner):
                piece.audio = self._finish(piece.audio, options)
                yield piece

    # ---- internals ------------------------------------------------------------------------
    def _job(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.05, top_p: float = 1.0,
             audio_prompt_path: str | Path | None = None, exaggeration: float = 0.5, cfg_weight: float = 0.5,
             temperature: float = 0.8, *, seed: int | None = None, max_new_tokens: int = 1000,
             n_timesteps: int | None = None, watermark: bool | None = None, fast_inference: bool = True,
             optimize_quality: bool = False, max_retries: int | None = None,
             token_budget_factor: float | None = -1.0, max_chars: int = MAX_CHARS) -> tuple[Job, dict]:
        """Validate a call's arguments; returns its Job and the output options."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text is empty: give some words to speak")
        sampling = dict(temperature=temperature, cfg_weight=cfg_weight, min_p=min_p, top_p=top_p,
                        repetition_penalty=repetition_penalty)
        for name, value in sampling.items():
            check_range(name, value, *SAMPLING_RANGES[name])
        check_range("exaggeration", exaggeration, 0.0)
        max_speech = self.t3.cfg.max_speech_tokens
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= max_speech:
            raise ValueError(f"max_new_tokens must be an integer in [1, {max_speech}], got {max_new_tokens!r}")
        if n_timesteps is not None and (not isinstance(n_timesteps, int) or n_timesteps < 1):
            raise ValueError(f"n_timesteps must be a positive integer, got {n_timesteps!r}")
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        preset = self.preset if fast_inference else replace(EXACT, t3_precision=self.preset.t3_precision)
        check_text(text)

        with self._voice_lock:  # this call's voice, whatever other threads set meanwhile
            if audio_prompt_path is not None:
                self.prepare_conditionals(audio_prompt_path, exaggeration=exaggeration)
            elif self.conds is None:
                raise ValueError("no voice: pass audio_prompt_path, call prepare_conditionals(), "
                                 "or load a checkpoint that has conds.pt")
            if exaggeration != float(self.conds.t3.emotion_adv.reshape(-1)[0]):
                self.conds = _with_exaggeration(self.conds, exaggeration, self.device)
            voice = self.conds

        chunks = self._chunks(text, preset, max_chars)
        # The batched presets' chunk streams come from `seed` directly: concurrent calls share the global RNG.
        base_seed = 0
        if preset.batched:
            base_seed = seed if seed is not None else int(torch.randint(0, 2**62, (), dtype=torch.long))
        elif seed is not None:
            torch.manual_seed(seed)  # upstream's stream
        if max_retries is None:
            max_retries = 0 if self.random_weights or not preset.batched else 2
        if token_budget_factor == -1.0:
            token_budget_factor = 2.5 if preset.batched else None
        if self.s3gen.meanflow:  # distilled for its own 2-step solve
            solve = {"n_timesteps": n_timesteps}
        else:
            solve = preset.solve if n_timesteps is None else {**preset.solve, "n_timesteps": n_timesteps}
        if optimize_quality:
            solve = {**solve, "f0_smoothing": F0Smoothing()}  # against robotic pitch jitter (benchmarks/hift_speed.md)
        if preset.prompt_seconds is not None:
            voice = Conditionals(voice.t3, trim_reference(voice.gen, preset.prompt_seconds))
        job = Job(chunks, voice, sampling, max_new_tokens, token_budget_factor, solve, preset.batched,
                  base_seed, max_retries, batch_size=self.max_batch if preset.batched else 1,
                  render_batch=8 if self.device.type == "cuda" else 1)
        return job, dict(watermark=watermark, optimize_quality=optimize_quality)

    def _chunks(self, text: str, preset: Preset, max_chars: int) -> list[Chunk]:
        if preset.normalize_text:
            text = normalize_english(text)
        if not preset.batched and len(text) <= max_chars:
            return [Chunk(text, "end")]  # the exact preset speaks a short text as upstream does, untouched
        return pack_chunks(text, max_chars)

    def _finish(self, audio: np.ndarray, options: dict) -> np.ndarray:
        if options["optimize_quality"] and len(audio):
            from .audio.postprocess import postprocess

            audio = postprocess(audio, self.sr)
        if (self.watermark if options["watermark"] is None else options["watermark"]) and len(audio):
            self._watermarker = self._watermarker or Watermarker()
            audio = self._watermarker(audio, self.sr)
        return np.ascontiguousarray(audio, dtype=np.float32)


def _meanflow_decoder(path: Path, config: ChatterboxConfig, base: S3Gen) -> S3Gen:
    """Turbo's meanflow S3Gen from `path`, sharing the base model's voice encoders (S3 tokenizer, CAMPPlus)."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the meanflow decoder is Chatterbox-Turbo's {MEANFLOW_FILE} "
                              f"(from_pretrained(decoder='meanflow') downloads it from {TURBO_REPO_ID})")
    with skip_weight_init():
        s3gen = S3Gen(meanflow_config(config.s3gen))
    load_weights(s3gen, read_safetensors(path), path, ignore_unexpected=True)
    s3gen.mel2wav.fold_weight_norm()
    s3gen.tokenizer, s3gen.speaker_encoder = base.tokenizer, base.speaker_encoder
    return s3gen


def _short_first(chunks: list[Chunk], max_chars: int) -> list[Chunk]:
    """The chunks with the first one re-packed into pieces of at most max_chars."""
    if len(chunks[0].text) <= max_chars:
        return chunks
    head = pack_chunks(chunks[0].text, max_chars)
    head[-1] = Chunk(head[-1].text, chunks[0].kind)
    return head + chunks[1:]


def _with_exaggeration(voice: Conditionals, exaggeration: float, device) -> Conditionals:
    """The voice with T3's emotion control set to `exaggeration` (the cached voice is not modified)."""
    t3c = voice.t3
    t3 = T3Cond(speaker_emb=t3c.speaker_emb, cond_prompt_speech_tokens=t3c.cond_prompt_speech_tokens,
                emotion_adv=exaggeration * torch.ones(1, 1, 1)).to(device=device)
    return Conditionals(t3, voice.gen)
