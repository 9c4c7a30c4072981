"""Chatterbox-Turbo and -Nano: a drop-in for upstream's `chatterbox.tts_turbo.ChatterboxTurboTTS`.

    tts = ChatterboxTurboTTS.from_pretrained(device="cuda")            # nano=True: ResembleAI/chatterbox-nano
    wav = tts.generate("Hi there [chuckle], long time no see.", audio_prompt_path="voice.wav")
    result = tts.synthesize(chapter_text, voice=my_voice, seed=7)       # any length, with metadata
    for piece in tts.generate_stream(chapter_text): ...

The same engine as ChatterboxTTS (this class is one, with Turbo's files and rules): long text in chunks,
checks and retries, continuous batching across calls, streaming, per-call voices. What differs is data:
the T3 is a GPT-2 (T3Config.turbo / .nano), the text a GPT-2 BPE with the 19 paralinguistic tags (written
in the text, e.g. "[laugh]"), sampling is temperature -> top_k -> top_p -> repetition penalty without CFG
(settings, model="turbo"), the decoder is the 2-step meanflow S3Gen with 3 silence tokens after each chunk.
Reference clips must be longer than 5 s and are brought to -27 LUFS (norm_loudness) as upstream's; T3's
prompt covers their first 15 s (375 tokens). cfg_weight, exaggeration and min_p are ignored, with
upstream's warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .audio.io import check_reference_clip
from .checkpoint import NANO_FILES, NANO_REPO_ID, TURBO_FILES, TURBO_REPO_ID, check_checkpoint_dir, download_checkpoint
from .config import turbo_config
from .devices import resolve_device
from .voices import Voice
from .settings import DEFAULT_PRESET, CallSettings, EngineSettings, engine_settings, real
from .text.gpt2_tokenizer import GPT2Tokenizer
from .tts import ChatterboxTTS, load_modules, read_config

log = logging.getLogger(__name__)

MIN_CLIP_SECONDS = 5.0  # upstream asserts a longer reference clip
CLIP_LUFS = -27.0  # upstream's norm_loudness target
TURBO_MAX_NEW_TOKENS = 1001  # upstream's loop: token 0 from the prefill, then up to 1000 more
UNUSED_T3_KEYS = ("tfmr.wte.weight",)  # GPT-2's token table: T3 feeds embeddings (upstream deletes it)


class ChatterboxTurboTTS(ChatterboxTTS):
    MODEL = "turbo"

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", nano: bool = False,
                   preset: str = DEFAULT_PRESET, watermark: bool = True, *,
                   settings: EngineSettings | None = None) -> ChatterboxTurboTTS:
        """Load a Turbo (or, with `nano`, Nano) checkpoint directory in the official layout (see
        checkpoint.TURBO_FILES); preset, watermark and settings as ChatterboxTTS.from_local."""
        if not isinstance(nano, bool):
            raise TypeError(f"nano must be True or False, got {nano!r}")
        resolved = resolve_device(device)
        if settings is None:
            settings = engine_settings(preset, resolved, model="nano" if nano else "turbo")
        elif not isinstance(settings, EngineSettings):
            raise TypeError(f"settings must be an EngineSettings, got {type(settings).__name__}")
        ckpt_dir = check_checkpoint_dir(ckpt_dir, NANO_FILES if nano else TURBO_FILES)
        config = read_config(ckpt_dir, turbo_config(nano=nano))
        if config.t3.backbone != "gpt2":
            raise ValueError(f"{ckpt_dir / 'config.json'} describes a {config.t3.backbone} T3, not Turbo's GPT-2")
        tokenizer = GPT2Tokenizer(ckpt_dir)
        ve, t3, s3gen = load_modules(ckpt_dir, config, UNUSED_T3_KEYS)
        return cls._assemble(ckpt_dir, ve, t3, s3gen, tokenizer, device, settings, watermark)

    @classmethod
    def from_pretrained(cls, device: str = "auto", nano: bool = False, preset: str = DEFAULT_PRESET,
                        watermark: bool = True, *, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> ChatterboxTurboTTS:
        """Download (or find in the Hugging Face cache) ResembleAI/chatterbox-turbo (nano: -nano), then `from_local`."""
        engine_settings(preset, resolve_device(device))  # fail before a download
        ckpt_dir = download_checkpoint(NANO_REPO_ID if nano else TURBO_REPO_ID, revision=revision,
                                       cache_dir=cache_dir, files=NANO_FILES if nano else TURBO_FILES)
        return cls.from_local(ckpt_dir, device=device, nano=nano, preset=preset, watermark=watermark)

    # ---- voices ---------------------------------------------------------------------------
    def prepare_conditionals(self, wav_fpath: str | Path, exaggeration: float = 0.0,
                             norm_loudness: bool = True) -> None:
        """Make the voice of a reference clip (longer than 5 s) the default voice, as upstream does; with
        norm_loudness the clip is first brought to -27 LUFS. exaggeration is kept but Turbo ignores it."""
        exaggeration = real("exaggeration", exaggeration, 0.0)
        self.conds = self.voice_from_clip(wav_fpath, norm_loudness=norm_loudness).with_exaggeration(exaggeration)

    def voice_from_clip(self, wav_fpath: str | Path, norm_loudness: bool = True) -> Voice:
        """The voice of a reference clip (longer than 5 s; its first 30 s are read), cached as ChatterboxTTS's."""
        return self.engine.voice_from_clip(wav_fpath, min_seconds=MIN_CLIP_SECONDS,
                                           loudness_lufs=CLIP_LUFS if norm_loudness else None)

    def conditionals_from_wav(self, wav: np.ndarray, sr: int, exaggeration: float = 0.0,
                              norm_loudness: bool = True) -> Voice:
        """The voice of a mono float32 clip longer than 5 s."""
        check_reference_clip(np.asarray(wav, dtype=np.float32).reshape(-1), sr, "the clip")
        return self.engine.voice_from_wav(wav, sr, exaggeration=real("exaggeration", exaggeration, 0.0),
                                          min_seconds=MIN_CLIP_SECONDS,
                                          loudness_lufs=CLIP_LUFS if norm_loudness else None)

    # ---- synthesis ------------------------------------------------------------------------
    def generate(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.0, top_p: float = 0.95,
                 audio_prompt_path: str | Path | None = None, exaggeration: float = 0.0, cfg_weight: float = 0.0,
                 temperature: float = 0.8, top_k: int = 1000, norm_loudness: bool = True, *,
                 voice: Voice | str | Path | None = None, seed: int | None = None,
                 max_new_tokens: int = TURBO_MAX_NEW_TOKENS, n_timesteps: int | None = None,
                 watermark: bool | None = None, fast_inference: bool = True,
                 optimize_quality: bool = False) -> torch.Tensor:
        """Speak `text` (any length); returns a (1, N) float32 tensor at `self.sr` (24 kHz).

        Upstream's arguments (cfg_weight, exaggeration and min_p are ignored with a warning; norm_loudness
        applies to audio_prompt_path's clip), plus ChatterboxTTS.generate's keyword extras (voice, seed,
        max_new_tokens: upstream's loop samples at most 1001 tokens, n_timesteps: default 2, ...).
        """
        result = self.synthesize(
            text, repetition_penalty=repetition_penalty, min_p=min_p, top_p=top_p,
            audio_prompt_path=audio_prompt_path, exaggeration=exaggeration, cfg_weight=cfg_weight,
            temperature=temperature, top_k=top_k, norm_loudness=norm_loudness, voice=voice, seed=seed,
            max_new_tokens=max_new_tokens, n_timesteps=n_timesteps, watermark=watermark,
            fast_inference=fast_inference, optimize_quality=optimize_quality)
        return torch.from_numpy(result.audio).unsqueeze(0)

    def _call(self, text: str, settings: CallSettings | None, *, audio_prompt_path: str | Path | None = None,
              norm_loudness: bool = True, voice: Voice | str | Path | None = None, exaggeration=0.0,
              cfg_weight=0.0, min_p=0.0, top_p=0.95, top_k=1000, max_new_tokens=TURBO_MAX_NEW_TOKENS,
              **kwargs) -> tuple[Voice, CallSettings]:
        """ChatterboxTTS._call with Turbo's defaults; cfg_weight, exaggeration and min_p are dropped (warned)."""
        if settings is None:
            ignored = [name for name, value in (("cfg_weight", cfg_weight), ("exaggeration", exaggeration),
                                                ("min_p", min_p)) if real(name, value, 0.0) > 0.0]
            if ignored:
                log.warning("CFG, min_p and exaggeration are not supported by the %s model and will be ignored "
                            "(got %s)", self.settings.model, ", ".join(ignored))
            kwargs.update(cfg_weight=0.0, min_p=0.0, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens)
        if voice is None and audio_prompt_path:  # upstream: a falsy path means no prompt
            self.prepare_conditionals(audio_prompt_path, norm_loudness=norm_loudness)
        return super()._call(text, settings, voice=voice, exaggeration=0.0, **kwargs)
