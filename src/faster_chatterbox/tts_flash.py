"""Chatterbox-Flash: the reference package's API (`chatterbox_flash.ChatterboxFlashTTS`) on this engine.

    tts = ChatterboxFlashTTS.from_pretrained("ResembleAI/chatterbox-flash", device="cuda")
    wav = tts.generate("Hello there.", audio_prompt_path="voice.wav", num_steps=10)  # (N,) float32 at tts.sr
    result = tts.synthesize(chapter_text, voice=my_voice, seed=7)  # any length, as ChatterboxTTS
    for piece in tts.generate_stream(chapter_text): ...            # the first chunk a block at a time

The checkpoint: t3_flash.safetensors (the English T3 fine-tuned for block diffusion, one more speech
embedding row for [MASK]), s3gen.safetensors (a meanflow decoder, 2 steps), ve.safetensors and tokenizer.json,
all read unchanged. Everything but T3's decoding is ChatterboxTTS's: voices, long text, checks and retries,
continuous batching across calls (of blocks: engine/block_diffusion.py), streaming, watermark, presets
(settings.FLASH_PRESETS: exact is the reference's decoding step for step).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import FLASH_FILES, FLASH_REPO_ID, download_checkpoint
from .config import ChatterboxConfig, flash_config
from .devices import resolve_device
from .settings import DEFAULT_PRESET, CallSettings, EngineSettings, flash_call_settings, flash_engine_settings
from .tts import ChatterboxTTS

BACKENDS = ("auto", "torch")  # the reference's names for the one backend this engine has
_PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


class ChatterboxFlashTTS(ChatterboxTTS):
    FILES = FLASH_FILES

    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", *, dtype: torch.dtype | None = None,
                   drf_block_size: int = 16, preset: str = DEFAULT_PRESET, watermark: bool = True,
                   settings: EngineSettings | None = None) -> ChatterboxFlashTTS:
        """Load a Chatterbox-Flash checkpoint directory. dtype: T3's weights (torch.float32 or torch.bfloat16;
        default: the preset's); drf_block_size: speech tokens per block (the checkpoint's: 16)."""
        if settings is None:
            settings = flash_engine_settings(preset, resolve_device(device), drf_block_size)
        if dtype is not None:
            if dtype not in _PRECISIONS:
                raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
            settings = replace(settings, t3_precision=_PRECISIONS[dtype])
        return super().from_local(ckpt_dir, device, settings.preset, watermark, settings=settings)

    @classmethod
    def from_pretrained(cls, repo_id: str = FLASH_REPO_ID, device: str = "auto", *, dtype: torch.dtype | None = None,
                        drf_block_size: int = 16, preset: str = DEFAULT_PRESET, watermark: bool = True,
                        revision: str | None = None, cache_dir: str | Path | None = None) -> ChatterboxFlashTTS:
        """Download (or find in the Hugging Face cache) a Chatterbox-Flash release, then `from_local`."""
        settings = flash_engine_settings(preset, resolve_device(device), drf_block_size)  # fail before downloading
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir, files=FLASH_FILES)
        return cls.from_local(ckpt_dir, device, dtype=dtype, watermark=watermark, settings=settings)

    @classmethod
    def _official_config(cls) -> ChatterboxConfig:
        return flash_config()

    def generate(self, text: str, *, audio_prompt_path: str | Path | None = None, exaggeration: float = 0.5,
                 normalize_text: bool = True, num_steps: int | None = None, temperature: float | None = None,
                 time_shift_tau: float | None = None, omnivoice_schedule_t_shift: float | None = None,
                 cfg_scale: float | None = None, position_temperature: float | None = None,
                 pmi_uncond_prior_precompute: bool | None = None, use_cuda_graph: bool = True,
                 backend: str = "auto", max_speech_tokens: int | None = None, n_cfm_timesteps: int | None = None,
                 voice=None, seed: int | None = None, watermark: bool | None = None,
                 fast_inference: bool = True) -> torch.Tensor:
        """Speak `text` (any length); returns the (N,) float32 waveform at `self.sr` (24 kHz), as the reference.

        The reference's arguments; a decoding parameter left None is the preset's (exact: the reference's
        defaults: num_steps 10, temperature 0.6, time_shift_tau 0.1, omnivoice_schedule_t_shift 0.5,
        cfg_scale 1.0, position_temperature 5.0, pmi_uncond_prior_precompute True). max_speech_tokens caps
        each chunk's speech tokens (the reference's budget: 6 per text token, at least 300);
        n_cfm_timesteps: the meanflow decoder's steps (2). use_cuda_graph is accepted for compatibility
        (this engine's CUDA path decides for itself); backend: "auto" or "torch".
        Plus ChatterboxTTS's voice=, seed=, watermark= and fast_inference= (see ChatterboxTTS.generate).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not isinstance(use_cuda_graph, bool):
            raise TypeError(f"use_cuda_graph must be a bool, got {use_cuda_graph!r}")
        result = self.synthesize(
            text, audio_prompt_path=audio_prompt_path, exaggeration=exaggeration, normalize_text=normalize_text,
            num_steps=num_steps, temperature=temperature, time_shift_tau=time_shift_tau,
            omnivoice_schedule_t_shift=omnivoice_schedule_t_shift, cfg_scale=cfg_scale,
            position_temperature=position_temperature, pmi_uncond_prior_precompute=pmi_uncond_prior_precompute,
            max_new_tokens=self.t3.cfg.max_speech_tokens if max_speech_tokens is None else max_speech_tokens,
            n_timesteps=n_cfm_timesteps, voice=voice, seed=seed, watermark=watermark, fast_inference=fast_inference)
        return torch.from_numpy(result.audio)

    def _call_settings(self, **kwargs) -> CallSettings:
        return flash_call_settings(self.engine.settings, **kwargs)
