"""The public API: a drop-in for upstream's `chatterbox.tts.ChatterboxTTS`, a thin facade over the engine.

    tts = ChatterboxTTS.from_pretrained(device="cuda")          # preset="fast" (default), "fastest", "exact"
    wav = tts.generate("Hello there.", audio_prompt_path="voice.wav")  # (1, N) float32 at tts.sr
    result = tts.synthesize(chapter_text, voice=my_voice)        # any length, with per-chunk metadata
    for piece in tts.generate_stream(chapter_text): ...          # audio as soon as each chunk is ready

The facade loads the files, resolves each call's settings once (settings.py) and its voice, and hands both to
the engine (pipeline.Engine); it post-processes and watermarks what comes back.
Per chunk: text -> punc_norm -> tokenizer -> T3 (speech tokens, 25 Hz) -> S3Gen flow (mel, 50 Hz)
-> HiFT (24 kHz audio); chunks are joined, then watermarked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .audio.io import check_reference_clip
from .checkpoint import (CHECKPOINT_FILES, RANDOM_MARKER, REPO_ID, TURBO_REPO_ID, CheckpointError,
                         check_checkpoint_dir, download_checkpoint, download_file, load_weights, read_pickled_state,
                         read_safetensors, skip_weight_init)
from .config import ChatterboxConfig
from .devices import resolve_device
from .engine.quantize import reduce_precision_
from .models.s3gen import MEANFLOW_FILE, S3GEN_SR, S3Gen, meanflow_config
from .models.t3 import T3
from .models.voice_encoder import VoiceEncoder
from .pipeline import Engine, Piece, SynthesisResult
from .settings import (DEFAULT_PRESET, MAX_CHARS, CallSettings, EngineSettings, call_settings, engine_settings,
                       real)
from .text.tokenizer import EnglishTokenizer
from .voices import Voice, VoiceLibrary
from .watermark import Watermarker

log = logging.getLogger(__name__)

DECODERS = ("cfm", "meanflow")
Conditionals = Voice  # upstream's name for a voice


class ChatterboxTTS:
    MAX_CHARS = MAX_CHARS  # longest chunk of text one T3 call speaks
    MODEL = "chatterbox"  # the engine settings' model (tts_turbo: "turbo")
    LANGUAGES: tuple[str, ...] = ()  # the language ids a call may name (the English model: none)
    FILES = CHECKPOINT_FILES  # a checkpoint directory's files (conds.pt optional)

    def __init__(self, t3, s3gen, ve, tokenizer: EnglishTokenizer, device, conds: Voice | None = None,
                 preset: str = DEFAULT_PRESET, watermark: bool = True, settings: EngineSettings | None = None):
        resolved = resolve_device(device)
        decoder = "meanflow" if s3gen.meanflow else "cfm"
        self.engine = Engine(t3, s3gen, ve, tokenizer, settings or engine_settings(preset, resolved, decoder, self.MODEL))
        self.sr = S3GEN_SR
        self.t3, self.s3gen, self.ve, self.tokenizer = t3, s3gen, ve, tokenizer
        self.device = str(device) if str(device) != "auto" else str(resolved)  # as the user named it, like upstream
        self.conds = conds  # the default voice: set by prepare_conditionals and audio_prompt_path, as upstream
        self.watermark = watermark
        self.watermarker = Watermarker() if watermark else None  # upstream's attribute: assign to replace it
        self.random_weights = False  # set by from_local for init-random checkpoints
        self.voices: VoiceLibrary | None = None  # names usable as `voice=`; see use_voice_library

    @property
    def settings(self) -> EngineSettings:
        return self.engine.settings

    @property
    def voice_cache_dir(self) -> Path | None:
        return self.engine.voice_cache_dir

    @voice_cache_dir.setter
    def voice_cache_dir(self, path: str | Path | None) -> None:
        self.engine.voice_cache_dir = None if path is None else Path(path)

    def close(self) -> None:
        """Stop the engine's T3 scheduler thread and free its batch; the model can't synthesise afterwards."""
        self.engine.close()

    def __enter__(self) -> ChatterboxTTS:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", preset: str = DEFAULT_PRESET,
                   watermark: bool = True, *, decoder: str = "cfm", meanflow_file: str | Path | None = None,
                   settings: EngineSettings | None = None) -> ChatterboxTTS:
        """Load a checkpoint directory in the official layout.

        settings: load-time settings to use instead of the preset's on this device (e.g.
        `replace(engine_settings("fast", "cuda"), max_batch=64)`); their preset names the call defaults.

        decoder: "cfm", the base model's flow decoder (10 CFM steps upstream), or "meanflow", Chatterbox-Turbo's
        distilled decoder (2 steps, no CFG) on this model's speech tokens (same vocabulary): `meanflow_file`,
        default ckpt_dir/s3gen_meanflow.safetensors. The presets' solver settings apply to "cfm" only.
        """
        settings = _load_settings(preset, device, decoder, settings)
        ckpt_dir = check_checkpoint_dir(ckpt_dir, cls.FILES)
        config = read_config(ckpt_dir, cls._official_config())
        tokenizer = EnglishTokenizer(ckpt_dir / "tokenizer.json")
        ve, t3, s3gen = load_modules(ckpt_dir, config)
        if decoder == "meanflow":
            s3gen = _meanflow_decoder(Path(meanflow_file or ckpt_dir / MEANFLOW_FILE), config, s3gen)
        return cls._assemble(ckpt_dir, ve, t3, s3gen, tokenizer, device, settings, watermark)

    @classmethod
    def _assemble(cls, ckpt_dir: Path, ve: VoiceEncoder, t3: T3, s3gen: S3Gen, tokenizer, device: str,
                  settings: EngineSettings, watermark: bool):
        """The loaded float32 modules brought to `settings` on `device`, with the checkpoint's voice."""
        if tokenizer.vocab_size > t3.cfg.text_tokens_dict_size:
            raise CheckpointError(f"{tokenizer.path} has {tokenizer.vocab_size} tokens but T3 "
                                  f"embeds only {t3.cfg.text_tokens_dict_size}")
        resolved = resolve_device(device)
        if settings.s3gen_dtype != torch.float32:
            s3gen.set_decoder_dtype(settings.s3gen_dtype)
        reduce_precision_(t3, settings.t3_precision, settings.t3_upcast_rows, settings.t3_packed_fp16,
                          settings.t3_packed_bf16_past_rows)
        t3.tfmr.kv_dtype = settings.kv_dtype

        conds = None
        if (ckpt_dir / "conds.pt").is_file():
            conds = Voice.load(ckpt_dir / "conds.pt").to(resolved)
        tts = cls(t3.to(resolved).eval(), s3gen.to(resolved).eval(), ve.to(resolved).eval(), tokenizer, device,
                  conds=conds, preset=settings.preset, watermark=watermark, settings=settings)
        tts.random_weights = (ckpt_dir / RANDOM_MARKER).is_file()
        return tts

    @classmethod
    def from_pretrained(cls, device: str = "auto", preset: str = DEFAULT_PRESET, watermark: bool = True, *,
                        decoder: str = "cfm", repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> ChatterboxTTS:
        """Download (or find in the Hugging Face cache) the official files, then `from_local`; decoder="meanflow"
        also fetches Turbo's s3gen_meanflow.safetensors from ResembleAI/chatterbox-turbo."""
        engine_settings(preset, resolve_device(device))  # fail before a multi-GB download
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir)
        meanflow = download_file(MEANFLOW_FILE, TURBO_REPO_ID, cache_dir=cache_dir) if decoder == "meanflow" else None
        return cls.from_local(ckpt_dir, device=device, preset=preset, watermark=watermark, decoder=decoder,
                              meanflow_file=meanflow)

    @classmethod
    def _official_config(cls) -> ChatterboxConfig:
        """The sizes of a checkpoint without config.json (the official one)."""
        return ChatterboxConfig()

    # ---- voices ---------------------------------------------------------------------------
    def prepare_conditionals(self, wav_fpath: str | Path, exaggeration: float = 0.5) -> None:
        """Make the voice of a reference clip (ideally 10 s or more of clean speech) the default voice, as
        upstream does. Voices are cached by file; see `voice_from_clip`."""
        exaggeration = real("exaggeration", exaggeration, 0.0)
        self.conds = self.voice_from_clip(wav_fpath).with_exaggeration(exaggeration)

    def voice_from_clip(self, wav_fpath: str | Path) -> Voice:
        """The voice of a reference clip (its first 30 s are read), cached in memory by file and, with
        `voice_cache_dir` set, on disk by content."""
        return self.engine.voice_from_clip(wav_fpath)

    def conditionals_from_wav(self, wav: np.ndarray, sr: int, exaggeration: float = 0.5) -> Voice:
        """The voice of a mono float32 clip (at least 0.5 s long; 10 s or more of clean speech is best)."""
        check_reference_clip(np.asarray(wav, dtype=np.float32).reshape(-1), sr, "the clip")
        return self.engine.voice_from_wav(wav, sr, exaggeration=real("exaggeration", exaggeration, 0.0))

    def use_voice_library(self, root: str | Path) -> VoiceLibrary:
        """Make the voices in folder `root` usable by name (`voice="narrator"`) and return the library."""
        variant = self.engine.voice_variant()
        self.voices = VoiceLibrary(root, lambda clip: self.voice_from_clip(clip), variant,
                                   device=self.engine.device)
        return self.voices

    def text_tokens(self, text: str) -> torch.Tensor:
        """T3's input for one chunk: (L,) ids wrapped in the start/stop text tokens."""
        return self.engine.text_tokens(text)

    # ---- synthesis ------------------------------------------------------------------------
    def generate(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.05, top_p: float = 1.0,
                 audio_prompt_path: str | Path | None = None, exaggeration: float = 0.5, cfg_weight: float = 0.5,
                 temperature: float = 0.8, *, voice: Voice | str | Path | None = None, seed: int | None = None,
                 max_new_tokens: int = 1000, n_timesteps: int | None = None, watermark: bool | None = None,
                 fast_inference: bool = True, optimize_quality: bool = False) -> torch.Tensor:
        """Speak `text` (any length); returns a (1, N) float32 tensor at `self.sr` (24 kHz).

        Upstream's arguments, plus:
        voice: this call's voice: a Voice, a clip path, or a name in the voice library (`use_voice_library`);
            default: audio_prompt_path's clip (which also becomes the default voice, as upstream), else the
            default voice. Other calls, running or later, never see it.
        seed: if given, the call is reproducible (exact preset: torch.manual_seed(seed) first, as upstream
            users do; batched presets: every chunk's random streams are hashed from it, the global RNG is left
            alone, so the output is the same with other calls running). Any non-negative integer.
        max_new_tokens: each chunk's speech-token cap (25 tokens per second of speech; upstream: 1000).
        n_timesteps: flow-matching steps of the S3Gen decoder (default: the preset's; upstream: 10).
        watermark: override the instance's watermark setting for this call.
        fast_inference: False runs upstream's algorithms for this call (one chunk after another on the
            global RNG, Euler 10 steps, no text normalisation, upstream's checks: none) on the weights and
            voices as loaded (load with preset="exact" for float32 and the two tokenizer passes per voice).
        optimize_quality: smooth the vocoder's F0 (median + Gaussian) and post-process the audio (high-pass,
            de-click, edge trim, loudness to -19 LUFS, peak limit).
        Texts longer than MAX_CHARS are split into chunks (see `synthesize` for the metadata).
        """
        result = self.synthesize(
            text, repetition_penalty=repetition_penalty, min_p=min_p, top_p=top_p,
            audio_prompt_path=audio_prompt_path, exaggeration=exaggeration, cfg_weight=cfg_weight,
            temperature=temperature, voice=voice, seed=seed, max_new_tokens=max_new_tokens, n_timesteps=n_timesteps,
            watermark=watermark, fast_inference=fast_inference, optimize_quality=optimize_quality)
        return torch.from_numpy(result.audio).unsqueeze(0)  # an ordinary tensor (not inference mode), as upstream's

    def synthesize(self, text: str, *, settings: CallSettings | None = None, progress: bool | None = None,
                   **kwargs) -> SynthesisResult:
        """`generate`'s work with its metadata: the audio, every chunk's text, tokens, attempts and failure
        reasons, the join positions, stage timings, and the settings and voice used. Keyword arguments as
        `generate`, plus max_retries (default: the preset's; 0 on random-weight checkpoints, whose audio is
        noise), token_budget_factor (a chunk's token budget in multiples of its expected length; exact: None,
        the cap alone), max_chars (chunk length), progress (a progress bar; default: for 4+ chunks).
        settings: a previous result's `settings` (with its `voice=result.voice`) reproduce its audio; then no
        other setting may be given."""
        voice, call = self._call(text, settings, **kwargs)
        result = self.engine.synthesize(text, voice, call, progress=progress,
                                        trim=True if call.optimize_quality else None)
        result.audio = self._finish(result.audio, call)
        return result

    def generate_stream(self, text: str, *, token_streaming: bool = True, settings: CallSettings | None = None,
                        **kwargs) -> Iterator[Piece]:
        """Yield the audio of `text` piece by piece as soon as each is ready (arguments as `synthesize`).

        The first chunk is cut to at most 100 characters (at a sentence, else a clause or word boundary) and
        decoded alone; with token_streaming (batched presets) its audio comes in pieces as T3 samples it (the
        first after 25 tokens, then 50, 100, 200, 400 more: pieces end at those counts whenever the tokens
        came), otherwise when the chunk is done. The T3 of each next window of chunks is decoded (by the engine's
        scheduler) while the current one is rendered. Concatenating the pieces' audio gives the whole output.
        Each piece carries its position and readiness time.
        """
        voice, call = self._call(text, settings, token_streaming=token_streaming, **kwargs)
        for piece in self.engine.stream(text, voice, call):
            piece.audio = self._finish(piece.audio, call)
            yield piece

    # ---- internals ------------------------------------------------------------------------
    def _call(self, text: str, settings: CallSettings | None, *, voice: Voice | str | Path | None = None,
              audio_prompt_path: str | Path | None = None, exaggeration=0.5, watermark: bool | None = None,
              token_streaming: bool = True, **kwargs) -> tuple[Voice, CallSettings]:
        """This call's voice and settings, validated; the default voice changes only for audio_prompt_path."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if "language" in kwargs and not self.LANGUAGES:
            raise TypeError("language applies to the multilingual model (ChatterboxMultilingualTTS) only")
        exaggeration = real("exaggeration", exaggeration, 0.0)
        if settings is not None:
            if kwargs:
                raise ValueError(f"give either settings or call arguments, not both (got {', '.join(kwargs)})")
            if not isinstance(settings, CallSettings):
                raise TypeError(f"settings must be a CallSettings (a result's .settings), got {type(settings).__name__}")
            call = settings
        else:
            call = self._call_settings(watermark=self.watermark if watermark is None else watermark,
                                       random_weights=self.random_weights,
                                       max_speech_tokens=self.t3.cfg.max_speech_tokens,
                                       token_streaming=token_streaming, **kwargs)
        if voice is not None:
            chosen = self._resolve_voice(voice)
        elif audio_prompt_path:  # upstream: a falsy path means no prompt
            self.prepare_conditionals(audio_prompt_path, exaggeration)
            chosen = self.conds
        elif self.conds is not None:
            chosen = self.conds
        else:
            raise ValueError("no voice: pass voice= or audio_prompt_path, call prepare_conditionals(), "
                             "or load a checkpoint that has conds.pt")
        if settings is None:
            chosen = chosen.with_exaggeration(exaggeration)
        return chosen, call

    def _call_settings(self, **kwargs) -> CallSettings:
        return call_settings(self.engine.settings, **kwargs)

    def _resolve_voice(self, voice: Voice | str | Path) -> Voice:
        if isinstance(voice, Voice):
            return voice.to(self.engine.device)
        if not isinstance(voice, (str, Path)):
            raise TypeError(f"voice must be a Voice, a clip path or a voice name, got {type(voice).__name__}")
        if isinstance(voice, str) and self.voices is not None and voice in self.voices:
            return self.voices.get(voice)
        if not Path(voice).is_file():
            known = f"; known voices: {', '.join(self.voices.names()) or 'none'}" if self.voices is not None else ""
            raise ValueError(f"voice {str(voice)!r} is neither a voice name nor a clip file{known}")
        return self.voice_from_clip(voice)

    def _finish(self, audio: np.ndarray, call: CallSettings) -> np.ndarray:
        if call.optimize_quality and len(audio):
            from .audio.postprocess import postprocess

            audio = postprocess(audio, self.sr)
        if call.watermark and len(audio):
            self.watermarker = self.watermarker or Watermarker()
            audio = self.watermarker.apply_watermark(audio, sample_rate=self.sr)
        return np.ascontiguousarray(audio, dtype=np.float32)


def read_config(ckpt_dir: Path, default: ChatterboxConfig) -> ChatterboxConfig:
    """The checkpoint's sizes: its config.json (init-random --small writes one) or, as the official
    checkpoints have none, `default`. Warns when the directory holds random weights."""
    if (ckpt_dir / RANDOM_MARKER).is_file():
        log.warning("%s holds RANDOM weights (faster-chatterbox init-random): the audio will be noise", ckpt_dir)
    config_path = ckpt_dir / "config.json"
    return ChatterboxConfig.load(config_path) if config_path.is_file() else default


def load_modules(ckpt_dir: Path, config: ChatterboxConfig, unused_t3_keys: tuple[str, ...] = (),
                 files: dict[str, str] | None = None) -> tuple[VoiceEncoder, T3, S3Gen]:
    """The voice encoder, T3 and S3Gen of `config` with the checkpoint's weights, float32 on the CPU.
    unused_t3_keys: tensors of the T3 file no module has (Turbo's GPT-2 token table), skipped. files: the
    file of a module when it is not the module's own name (Multilingual: pickled state dicts, ve.pt, s3gen.pt)."""
    files = files or {}
    with skip_weight_init():
        modules = config.build_modules()
    for name, module in modules.items():
        path = ckpt_dir / files.get(name, name)
        state = read_pickled_state(path) if path.suffix == ".pt" else read_safetensors(path)
        if name == config.t3_file:
            state = {k: v for k, v in state.items() if k not in unused_t3_keys}
        load_weights(module, state, path, ignore_unexpected=name == config.s3gen_file)  # upstream: non-strict
    ve, t3, s3gen = modules["ve.safetensors"], modules[config.t3_file], modules[config.s3gen_file]
    s3gen.mel2wav.fold_weight_norm()
    return ve, t3, s3gen


def _load_settings(preset: str, device: str, decoder: str, settings: EngineSettings | None, *,
                   model: str = "chatterbox", alignment_guard: bool = False,
                   drop_final_token: bool = False) -> EngineSettings:
    """The load-time settings: the preset's on the device, or the caller's (validated)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    if settings is None:
        return engine_settings(preset, resolve_device(device), decoder, model=model, alignment_guard=alignment_guard,
                               drop_final_token=drop_final_token)
    if not isinstance(settings, EngineSettings):
        raise TypeError(f"settings must be an EngineSettings, got {type(settings).__name__}")
    return settings


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

