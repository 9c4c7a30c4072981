"""Voice conversion: a drop-in for upstream's `chatterbox.vc.ChatterboxVC`, on this project's S3Gen.

    vc = ChatterboxVC.from_pretrained(device="cuda")
    wav = vc.generate("speech.wav", target_voice_path="target.wav")   # (1, N) float32 at vc.sr (24 kHz)
    for piece in vc.generate_stream("long_talk.wav"): ...

The source speech becomes S3 speech tokens (our S3 tokenizer, 25 per second) and S3Gen re-renders them in
the target voice (`S3Gen.render`). The exact preset renders them in one piece on the global random stream,
as upstream does. The other presets split a long source into pieces of PIECE_TOKENS tokens, each rendered
with CONTEXT_TOKENS of the source on either side (the flow encoder looks ahead, the decoder needs what came
before) and its own random stream, as one batch per `render_batch` pieces; the pieces' own spans are then
joined with a short linear crossfade (the two renderings are of the same sound), or streamed one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .audio.io import load_audio
from .checkpoint import REPO_ID, CheckpointError, download_checkpoint, load_weights, read_safetensors, skip_weight_init
from .config import ChatterboxConfig
from .devices import resolve_device
from .models.s3gen import S3_SR, S3GEN_SR, S3Gen
from .pipeline import Piece
from .settings import (DEFAULT_PRESET, CallSettings, EngineSettings, call_settings, engine_settings, stream_seed,
                       torch_seed)
from .tts import _load_settings, read_config
from .voices import Voice
from .watermark import Watermarker

PIECE_TOKENS = 250  # 10 s of speech per piece
CONTEXT_TOKENS = 25  # 1 s of the source rendered on either side of a piece, then dropped
CROSSFADE_MS = 20.0
VC_FILES = ("s3gen.safetensors", "conds.pt")


class ChatterboxVC:
    """S3Gen alone: source speech -> the same speech in the target voice."""

    DEC_COND_LEN = 10 * S3GEN_SR  # the target clip's first 10 s, as upstream

    def __init__(self, s3gen: S3Gen, device: str, ref_dict: dict | None = None, *,
                 settings: EngineSettings | None = None, watermark: bool = True):
        self.settings = settings or engine_settings(DEFAULT_PRESET, resolve_device(device))
        self.device = torch.device(self.settings.device)
        self.sr = S3GEN_SR
        self.s3gen = s3gen
        self.ref_dict = None if ref_dict is None else {k: v.to(self.device) if torch.is_tensor(v) else v
                                                       for k, v in ref_dict.items()}
        self.watermark = watermark
        self.watermarker = Watermarker() if watermark else None

    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", preset: str = DEFAULT_PRESET,
                   watermark: bool = True, *, settings: EngineSettings | None = None) -> ChatterboxVC:
        """Load s3gen.safetensors (sizes from init-random's config.json if present) and the built-in voice's
        S3Gen half from conds.pt."""
        settings = _load_settings(preset, device, "cfm", settings)
        ckpt_dir = Path(ckpt_dir)
        if not (ckpt_dir / "s3gen.safetensors").is_file():
            raise CheckpointError(f"{ckpt_dir} has no s3gen.safetensors: voice conversion needs Chatterbox's S3Gen")
        with skip_weight_init():
            s3gen = S3Gen(read_config(ckpt_dir, ChatterboxConfig()).s3gen)
        path = ckpt_dir / "s3gen.safetensors"
        load_weights(s3gen, read_safetensors(path), path, ignore_unexpected=True)  # upstream: non-strict
        s3gen.mel2wav.fold_weight_norm()
        if settings.s3gen_dtype != torch.float32:
            s3gen.set_decoder_dtype(settings.s3gen_dtype)
        ref = Voice.load(ckpt_dir / "conds.pt").gen if (ckpt_dir / "conds.pt").is_file() else None
        return cls(s3gen.to(settings.device).eval(), device, ref, settings=settings, watermark=watermark)

    @classmethod
    def from_pretrained(cls, device: str = "auto", preset: str = DEFAULT_PRESET, watermark: bool = True, *,
                        repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None) -> ChatterboxVC:
        engine_settings(preset, resolve_device(device))  # fail before downloading
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir, files=VC_FILES)
        return cls.from_local(ckpt_dir, device, preset, watermark)

    def set_target_voice(self, wav_fpath: str | Path) -> None:
        """Make the voice of a clip (its first 10 s) the target, as upstream."""
        wav = load_audio(wav_fpath, S3GEN_SR, max_seconds=self.DEC_COND_LEN / S3GEN_SR)
        self.ref_dict = self.s3gen.embed_ref(torch.from_numpy(wav[: self.DEC_COND_LEN]).to(self.device), S3GEN_SR)

    # ---- conversion -----------------------------------------------------------------------
    def generate(self, audio: str | Path, target_voice_path: str | Path | None = None, *, seed: int | None = None,
                 watermark: bool | None = None) -> torch.Tensor:
        """The speech of the file `audio` in the target voice: (1, N) float32 at `self.sr`, N = 960 per source
        token (25 per second). target_voice_path: also becomes the target voice, as upstream. seed: makes a
        batched preset's output reproducible (exact preset: torch.manual_seed(seed) first)."""
        pieces = list(self.generate_stream(audio, target_voice_path, seed=seed, watermark=False))
        wav = np.concatenate([p.audio for p in pieces])
        return torch.from_numpy(self._watermarked(wav, self.watermark if watermark is None else watermark))[None]

    def generate_stream(self, audio: str | Path, target_voice_path: str | Path | None = None, *,
                        seed: int | None = None, watermark: bool | None = None) -> Iterator[Piece]:
        """`generate`'s audio piece by piece, each as soon as its render batch is done (exact preset: one
        piece); concatenated, the pieces are what `generate` returns (before watermarking, which is per piece)."""
        if target_voice_path:
            self.set_target_voice(target_voice_path)
        if self.ref_dict is None:
            raise ValueError("no target voice: pass target_voice_path or call set_target_voice(), or load a "
                             "checkpoint that has conds.pt")
        call = call_settings(self.settings, seed=seed, watermark=self.watermark if watermark is None else watermark)
        if not call.seeded_streams and call.seed is not None:  # the global stream, seeded as upstream users do
            torch.manual_seed(torch_seed(call.seed))
        tokens = self.source_tokens(audio)
        spans = _spans(len(tokens), PIECE_TOKENS if call.seeded_streams else len(tokens))
        spt, hold = self.s3gen.samples_per_token, int(self.sr * CROSSFADE_MS / 1000) // 2
        begin, pending, emitted = time.perf_counter(), None, 0
        for k in range(0, len(spans), self.settings.render_batch):
            group = spans[k : k + self.settings.render_batch]
            for j, ((a, b), wav) in enumerate(zip(group, self._render(tokens, group, call))):
                offset = a - max(0, a - CONTEXT_TOKENS)  # the piece's first token in its window
                lead, tail = (hold if a > 0 else 0), (hold if b < len(tokens) else 0)
                piece = wav[offset * spt - lead : (offset + b - a) * spt + tail]  # [a - lead, b + tail) in samples
                if pending is not None:  # the previous piece's last 2 * hold samples rendered the same span
                    fade = ((np.arange(2 * hold) + 0.5) / (2 * hold)).astype(np.float32)
                    piece = np.concatenate([pending * (1 - fade) + piece[: 2 * hold] * fade, piece[2 * hold :]])
                pending = piece[len(piece) - 2 * tail :] if tail else None
                out = piece[: len(piece) - 2 * tail]
                yield Piece(self._watermarked(out, call.watermark), self.sr, k + j, emitted / self.sr,
                            time.perf_counter() - begin, last=b == len(tokens))
                emitted += len(out)

    def source_tokens(self, audio: str | Path) -> list[int]:
        """The S3 speech tokens of the file `audio` (read at 16 kHz, as upstream)."""
        wav = torch.from_numpy(load_audio(audio, S3_SR)).to(self.device)[None]
        tokens, _ = self.s3gen.tokenizer(wav)
        return tokens[0].tolist()

    def _render(self, tokens: list[int], spans: list[tuple[int, int]], call: CallSettings) -> list[np.ndarray]:
        """The audio of pieces `spans` of the source, each with its context, as one render."""
        windows = [tokens[max(0, a - CONTEXT_TOKENS) : b + CONTEXT_TOKENS] for a, b in spans]
        generators = None
        if call.seeded_streams:
            generators = [torch.Generator(device=self.device).manual_seed(stream_seed(call.seed, "vc", a))
                          for a, _ in spans]
        s = call.solve
        return self.s3gen.render(windows, self.ref_dict, generators, batch=len(spans), n_timesteps=s.n_timesteps,
                                 solver=s.solver, schedule=s.schedule, sway_coef=s.sway_coef,
                                 prompt_seconds=s.prompt_seconds)

    def _watermarked(self, wav: np.ndarray, watermark: bool) -> np.ndarray:
        if watermark and len(wav):
            self.watermarker = self.watermarker or Watermarker()
            wav = self.watermarker.apply_watermark(wav, sample_rate=self.sr)
        return np.ascontiguousarray(wav, dtype=np.float32)


def _spans(n_tokens: int, piece: int) -> list[tuple[int, int]]:
    """[a, b) token spans of at most `piece` tokens covering n_tokens (the last one at least half a piece
    long where the source allows: a short final piece is merged into its predecessor)."""
    if n_tokens == 0:
        raise ValueError("the source audio has no speech tokens: it is too short")
    edges = list(range(0, n_tokens, piece)) + [n_tokens]
    if len(edges) > 2 and edges[-1] - edges[-2] < piece // 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))
