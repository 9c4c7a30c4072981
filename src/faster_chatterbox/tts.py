"""The public API: a drop-in for upstream's `chatterbox.tts.ChatterboxTTS`.

    tts = ChatterboxTTS.from_pretrained(device="cuda")
    wav = tts.generate("Hello there.", audio_prompt_path="voice.wav")  # (1, N) float32 at tts.sr

Pipeline: text -> punc_norm -> tokenizer -> T3 (speech tokens, 25 Hz) -> S3Gen flow (mel, 50 Hz)
-> HiFT (24 kHz audio) -> watermark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio.io import load_audio, resample
from .config import ChatterboxConfig
from .checkpoint import (REPO_ID, CheckpointError, check_checkpoint_dir, download_checkpoint, load_weights,
                         read_safetensors, skip_weight_init)
from .devices import resolve_device
from .engine.sampling import SAMPLING_RANGES, check_range
from .engine.t3_decode import generate_speech_tokens
from .models.s3gen import S3GEN_SR, S3_SR, S3Gen
from .models.t3 import T3, T3Cond
from .models.voice_encoder import VoiceEncoder
from .random_checkpoint import RANDOM_MARKER
from .text.normalize import punc_norm
from .text.tokenizer import EnglishTokenizer
from .watermark import Watermarker

log = logging.getLogger(__name__)

PRESETS = ("exact",)  # `exact`: fp32 and upstream's algorithms step for step (the oracle)


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

    def __init__(self, t3: T3, s3gen: S3Gen, ve: VoiceEncoder, tokenizer: EnglishTokenizer, device,
                 conds: Conditionals | None = None, preset: str = "exact", watermark: bool = True):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        self.sr = S3GEN_SR
        self.t3, self.s3gen, self.ve, self.tokenizer = t3, s3gen, ve, tokenizer
        self.device = torch.device(device)
        self.conds = conds
        self.preset = preset
        self.watermark = watermark
        self._watermarker = Watermarker() if watermark else None
        self.random_weights = False  # set by from_local for init-random checkpoints

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", preset: str = "exact",
                   watermark: bool = True) -> ChatterboxTTS:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        device = resolve_device(device)
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

        conds = None
        if (ckpt_dir / "conds.pt").is_file():
            conds = Conditionals.load(ckpt_dir / "conds.pt").to(device)
        tts = cls(t3.to(device).eval(), s3gen.to(device).eval(), ve.to(device).eval(), tokenizer, device,
                  conds=conds, preset=preset, watermark=watermark)
        tts.random_weights = random_weights
        return tts

    @classmethod
    def from_pretrained(cls, device: str = "auto", preset: str = "exact", watermark: bool = True, *,
                        repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> ChatterboxTTS:
        """Download (or find in the Hugging Face cache) the official files, then `from_local`."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        resolve_device(device)  # fail before a multi-GB download
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir)
        return cls.from_local(ckpt_dir, device=device, preset=preset, watermark=watermark)

    # ---- voices ---------------------------------------------------------------------------
    def prepare_conditionals(self, wav_fpath: str | Path, exaggeration: float = 0.5) -> None:
        """Make the voice of a reference clip (ideally 10 s or more of clean speech) the current voice."""
        check_range("exaggeration", exaggeration, 0.0)
        self.conds = self.conditionals_from_wav(load_audio(wav_fpath, S3GEN_SR), S3GEN_SR, exaggeration)

    @torch.inference_mode()
    def conditionals_from_wav(self, wav: np.ndarray, sr: int, exaggeration: float = 0.5) -> Conditionals:
        """The voice of a mono float32 clip, computed as upstream's prepare_conditionals does."""
        check_range("exaggeration", exaggeration, 0.0)
        wav_24k = resample(np.asarray(wav, dtype=np.float32), sr, S3GEN_SR)  # as librosa.load(sr=24000)
        wav_16k = resample(wav_24k, S3GEN_SR, S3_SR)
        gen = self.s3gen.embed_ref(torch.from_numpy(wav_24k[: self.DEC_COND_LEN]).to(self.device), S3GEN_SR)

        prompt_len = self.t3.cfg.speech_cond_prompt_len
        t3_prompt, _ = self.s3gen.tokenizer([torch.from_numpy(wav_16k[: self.ENC_COND_LEN])], max_len=prompt_len)
        ve_embed = torch.from_numpy(self.ve.embeds_from_wavs([wav_16k], sample_rate=S3_SR))
        t3_cond = T3Cond(
            speaker_emb=ve_embed.mean(dim=0, keepdim=True),
            cond_prompt_speech_tokens=torch.atleast_2d(t3_prompt),
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_cond, gen)

    # ---- synthesis ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, text: str, repetition_penalty: float = 1.2, min_p: float = 0.05, top_p: float = 1.0,
                 audio_prompt_path: str | Path | None = None, exaggeration: float = 0.5, cfg_weight: float = 0.5,
                 temperature: float = 0.8, *, seed: int | None = None, max_new_tokens: int = 1000,
                 n_timesteps: int = 10, watermark: bool | None = None) -> torch.Tensor:
        """Speak `text`; returns a (1, N) float32 tensor at `self.sr` (24 kHz).

        seed: if given, torch.manual_seed(seed) first (otherwise the global RNG is used as is).
        max_new_tokens: T3's token budget (25 tokens per second of speech; upstream fixes 1000).
        n_timesteps: flow-matching steps of the S3Gen decoder (upstream: 10).
        watermark: override the instance's watermark setting for this call.
        """
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
        if not isinstance(n_timesteps, int) or n_timesteps < 1:
            raise ValueError(f"n_timesteps must be a positive integer, got {n_timesteps!r}")

        if audio_prompt_path is not None:
            self.prepare_conditionals(audio_prompt_path, exaggeration=exaggeration)
        elif self.conds is None:
            raise ValueError("no voice: pass audio_prompt_path, call prepare_conditionals(), "
                             "or load a checkpoint that has conds.pt")
        if exaggeration != float(self.conds.t3.emotion_adv.reshape(-1)[0]):
            t3c = self.conds.t3
            self.conds.t3 = T3Cond(speaker_emb=t3c.speaker_emb, cond_prompt_speech_tokens=t3c.cond_prompt_speech_tokens,
                                   emotion_adv=exaggeration * torch.ones(1, 1, 1)).to(device=self.device)

        ids = self.tokenizer.encode(punc_norm(text))
        max_text = self.t3.cfg.max_text_tokens
        if len(ids) > max_text:
            raise ValueError(f"text is {len(ids)} tokens long; one call takes at most {max_text}")
        text_tokens = torch.tensor([self.t3.cfg.start_text_token, *ids, self.t3.cfg.stop_text_token],
                                   dtype=torch.long, device=self.device)

        if seed is not None:
            torch.manual_seed(seed)
        tokens = generate_speech_tokens(self.t3, self.conds.t3, text_tokens, max_new_tokens=max_new_tokens,
                                        temperature=temperature, cfg_weight=cfg_weight,
                                        repetition_penalty=repetition_penalty, min_p=min_p, top_p=top_p)
        tokens = tokens[tokens < self.s3gen.vocab_size]  # drop start/stop and other special ids
        if tokens.numel() == 0:
            log.warning("T3 produced no speech tokens; returning silence")
            return torch.zeros(1, 0)
        wav = self.s3gen.inference(tokens, self.conds.gen, n_timesteps=n_timesteps)  # (1, N)
        wav = wav.squeeze(0).float().cpu().numpy()
        if self.watermark if watermark is None else watermark:
            self._watermarker = self._watermarker or Watermarker()
            wav = self._watermarker(wav, self.sr)
        return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).unsqueeze(0)
