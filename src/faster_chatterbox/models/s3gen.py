"""S3Gen: speech tokens -> 24 kHz waveform, in the voice of a reference clip.

  reference clip --(S3 tokenizer, CAMPPlus, 24 kHz mel)--> prompt tokens, x-vector, prompt mel
  tokens + prompt --(flow: conformer encoder + CFM decoder)--> mel (50 Hz) --(HiFT)--> audio
Attribute names match the official `s3gen.safetensors` keys. Chatterbox-Turbo's `s3gen_meanflow.safetensors`
is the same module with a meanflow estimator (`meanflow_config`), solved in 2 Euler steps without CFG.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..audio.mel import s3gen_mel_spectrogram
from ..audio.sinc_resample import sinc_resample
from .campplus import CAMPPlus, CAMPPlusConfig
from .flow import CausalMaskedDiffWithXvec, FlowConfig
from .hift import F0Smoothing, HiFTConfig, HiFTGenerator
from .s3_tokenizer import S3_SR, S3Tokenizer, S3TokenizerConfig

log = logging.getLogger(__name__)

S3GEN_SR = 24000
TRIM_FADE_SAMPLES = S3GEN_SR // 50  # upstream zeroes the first 20 ms, then fades in over 20 ms
TOKEN_HZ, MEL_HZ = 25, 50
CFM_STEPS, MEANFLOW_STEPS = 10, 2  # upstream's flow steps for the base and the meanflow (Turbo) decoder
MEANFLOW_FILE = "s3gen_meanflow.safetensors"
SILENCE_TOKEN = 4299  # the speech token of silence (Turbo appends three before its meanflow decoder)


@dataclass
class S3GenConfig:
    tokenizer: S3TokenizerConfig = field(default_factory=S3TokenizerConfig)
    speaker_encoder: CAMPPlusConfig = field(default_factory=CAMPPlusConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)


def meanflow_config(cfg: S3GenConfig | None = None) -> S3GenConfig:
    """`cfg` (default: the official sizes) with Turbo's meanflow estimator: the layout of s3gen_meanflow.safetensors."""
    cfg = cfg or S3GenConfig()
    return replace(cfg, flow=replace(cfg.flow, estimator=replace(cfg.flow.estimator, meanflow=True)))


def trim_reference(ref: dict, seconds: float) -> dict:
    """A voice's S3Gen reference cut to its first `seconds`: prompt tokens (25 Hz) and prompt mel (50 Hz) cut
    consistently, the x-vector kept. A shorter decoder prompt means fewer frames per flow step."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    n_tokens = min(int(round(seconds * TOKEN_HZ)), ref["prompt_token"].size(1))
    if n_tokens < 1:
        raise ValueError(f"a reference of {seconds} s holds no speech token (one per {1 / TOKEN_HZ} s)")
    out = dict(ref)
    out["prompt_token"] = ref["prompt_token"][:, :n_tokens]
    out["prompt_token_len"] = ref["prompt_token_len"].clamp(max=n_tokens)
    out["prompt_feat"] = ref["prompt_feat"][:, : n_tokens * MEL_HZ // TOKEN_HZ]
    if ref.get("prompt_feat_len") is not None:
        out["prompt_feat_len"] = ref["prompt_feat_len"].clamp(max=out["prompt_feat"].size(1))
    return out


class S3Gen(nn.Module):
    def __init__(self, cfg: S3GenConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or S3GenConfig()
        self.tokenizer = S3Tokenizer(cfg.tokenizer)
        self.speaker_encoder = CAMPPlus(cfg.speaker_encoder)
        self.flow = CausalMaskedDiffWithXvec(cfg.flow)
        self.mel2wav = HiFTGenerator(cfg.hift)
        fade = torch.zeros(2 * TRIM_FADE_SAMPLES)
        fade[TRIM_FADE_SAMPLES:] = (torch.cos(torch.linspace(torch.pi, 0, TRIM_FADE_SAMPLES)) + 1) / 2
        self.register_buffer("trim_fade", fade, persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.flow.cfg.vocab_size

    @torch.inference_mode()
    def embed_ref(self, wav: torch.Tensor, sr: int = S3GEN_SR) -> dict:
        """The S3Gen half of a voice from a mono clip (N,) (upstream uses at most its first 10 s).

        Returns upstream's `ref_dict`: prompt_token (1, Tp), prompt_token_len (1,), prompt_feat (1, 2 Tp, 80),
        prompt_feat_len None, embedding (1, 192).
        """
        wav = wav.reshape(1, -1).float()
        wav_24k = sinc_resample(wav, sr, S3GEN_SR)
        prompt_feat = s3gen_mel_spectrogram(wav_24k).transpose(1, 2)  # (1, T_mel, 80)
        wav_16k = sinc_resample(wav, sr, S3_SR)
        embedding = self.speaker_encoder.inference(wav_16k)  # (1, 192)
        tokens, token_lens = self.tokenizer(wav_16k)  # (1, Tp), (1,)
        if prompt_feat.size(1) != 2 * tokens.size(1):
            log.info("reference mel has %d frames for %d tokens; truncating the tokens to fit",
                        prompt_feat.size(1), tokens.size(1))
            tokens = tokens[:, : prompt_feat.size(1) // 2]
            token_lens = torch.full_like(token_lens, tokens.size(1))
        return dict(prompt_token=tokens, prompt_token_len=token_lens, prompt_feat=prompt_feat,
                    prompt_feat_len=None, embedding=embedding)

    @property
    def meanflow(self) -> bool:
        return self.flow.cfg.estimator.meanflow

    def set_decoder_dtype(self, dtype: torch.dtype, vocoder_dtype: torch.dtype | None = None) -> None:
        """Run the flow (encoder + estimator) in `dtype` (e.g. torch.bfloat16) and HiFT in `vocoder_dtype`
        (None: `dtype`); the tokenizer and CAMPPlus, which only see voices, stay float32. The ODE state, times
        and output audio stay float32."""
        vocoder_dtype = vocoder_dtype or dtype
        for name, value in (("dtype", dtype), ("vocoder_dtype", vocoder_dtype)):
            if not (isinstance(value, torch.dtype) and value.is_floating_point):
                raise ValueError(f"the decoder's {name} must be a floating-point torch.dtype, got {value!r}")
        self.flow.to(dtype)
        self.mel2wav.make_fast(vocoder_dtype)  # channels-last convolutions; F0, source and STFTs stay float32

    def draw_noise(self, n_prompt_tokens: int, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One call's starting noise (1, 80, 2 (Tp + T)), float32: the shape of the encoder's output over the
        prompt and target tokens (the prompt mel may be a frame longer), from `generator` (None: the global RNG,
        as upstream draws it).

        The meanflow decoder draws the target frames' noise first, as upstream's Turbo does. To reproduce a row of
        `inference_batch` alone, pass the same noise to `inference`.
        """
        ratio, device = self.flow.cfg.token_mel_ratio, self.trim_fade.device
        device = generator.device if generator is not None else device
        shape = (1, self.flow.cfg.mel_dim, ratio * (n_prompt_tokens + n_tokens))
        if not self.meanflow:
            return torch.randn(shape, device=device, generator=generator)
        target = torch.randn(1, shape[1], ratio * n_tokens, device=device, generator=generator)
        noise = torch.randn(shape, device=device, generator=generator)
        noise[:, :, ratio * n_prompt_tokens:] = target
        return noise

    @property
    def samples_per_token(self) -> int:
        """Output samples per speech token: token_mel_ratio mel frames of HiFT's hop (2 x 480 at 24 kHz)."""
        return self.flow.cfg.token_mel_ratio * S3GEN_SR // MEL_HZ

    @torch.inference_mode()
    def render(self, tokens: list[list[int]], ref: dict | list[dict], generators: list[torch.Generator] | None = None,
               *, batch: int = 1, n_timesteps: int | None = None, solver: str | None = None,
               schedule: str | None = None, sway_coef: float | None = None, prompt_seconds: float | None = None,
               f0_smoothing: F0Smoothing | None = None, trailing_silence: int = 0) -> list[np.ndarray]:
        """The one entry from speech tokens to audio: chunks -> [(N_i,) float32 at 24 kHz].

        tokens[i]: chunk i's speech tokens (< vocab_size; a chunk without any gets no audio). ref: the voice
        (`embed_ref`'s dict) of every chunk, or a list of one per chunk (chunks of several calls rendered as one
        batch), its decoder prompt cut to its first `prompt_seconds` (None: all of it, upstream's 10 s).
        generators[i]: chunk i's random stream, drawn for the flow's starting noise and then HiFT's source; None:
        the global RNG, chunk after chunk as upstream's calls draw it. batch: chunks per flow batch (needs
        generators). trailing_silence: silence tokens appended to each chunk (Turbo feeds its meanflow decoder 3;
        Chatterbox-Flash feeds the same decoder none). Solve arguments as in `inference`.
        """
        if not isinstance(ref, (dict, list, tuple)):
            raise TypeError(f"ref must be a voice's reference dict or a list of them, got {type(ref).__name__}")
        refs = [ref] * len(tokens) if isinstance(ref, dict) else list(ref)
        for name, per_chunk in (("ref", refs), ("generators", generators)):
            if per_chunk is not None and len(per_chunk) != len(tokens):
                raise ValueError(f"{name} must have one entry per chunk, got {len(per_chunk)} for {len(tokens)} chunks")
        if prompt_seconds is not None:
            refs = [trim_reference(r, prompt_seconds) for r in refs]
        if trailing_silence:
            tokens = [list(t) + [SILENCE_TOKEN] * trailing_silence if len(t) else t for t in tokens]
        todo = [i for i, t in enumerate(tokens) if len(t)]
        device = self.trim_fade.device
        solve = dict(n_timesteps=n_timesteps, solver=solver, schedule=schedule, sway_coef=sway_coef,
                     f0_smoothing=f0_smoothing)
        wavs: dict[int, torch.Tensor] = {}
        if generators is None:
            for i in todo:
                wavs[i] = self.inference(torch.tensor(tokens[i], device=device), refs[i], **solve)
        else:
            for k in range(0, len(todo), batch):
                group = todo[k : k + batch]
                noises = [self.draw_noise(int(refs[i]["prompt_token_len"].reshape(-1)[0]), len(tokens[i]),
                                          generators[i]) for i in group]
                if len(group) == 1:  # the unpadded path (what a batch's rows equal up to rounding)
                    wavs[group[0]] = self.inference(torch.tensor(tokens[group[0]], device=device), refs[group[0]],
                                                    noise=noises[0], vocoder_generator=generators[group[0]], **solve)
                    continue
                rendered = self.inference_batch([torch.tensor(tokens[i], device=device) for i in group],
                                                [refs[i] for i in group], noises=noises,
                                                vocoder_generators=[generators[i] for i in group], **solve)
                wavs.update(zip(group, rendered))
        empty = np.zeros(0, dtype=np.float32)
        return [wavs[i].reshape(-1).float().cpu().numpy() if i in wavs else empty for i in range(len(tokens))]

    def _check_tokens(self, speech_tokens: torch.Tensor) -> torch.Tensor:
        tokens = speech_tokens.reshape(1, -1).to(self.trim_fade.device)
        if tokens.numel() == 0:
            raise ValueError("no speech tokens to decode")
        if tokens.is_floating_point() or int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"speech tokens must be integers in [0, {self.vocab_size}) (drop special tokens first)")
        return tokens

    def _finish(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.float()
        wav[:, : self.trim_fade.numel()] *= self.trim_fade[: wav.size(1)]  # hide spill-over from the reference clip
        return wav

    def _vocode_rows(self, mels: list[torch.Tensor], f0_smoothing: F0Smoothing | None = None,
                     generators: list[torch.Generator] | None = None) -> list[torch.Tensor]:
        """HiFT, one row at a time (batching does not pay on CPU: benchmarks/hift_speed.md):
        [(1, 80, F_i)] -> [(1, F_i * 480)]; generators: each row's source noise (None: the global RNG)."""
        generators = generators or [None] * len(mels)
        return [self.mel2wav.inference(mel, f0_smoothing=f0_smoothing, generators=[g] if g else None)[0]
                for mel, g in zip(mels, generators)]  # casts as it needs

    @torch.inference_mode()
    def inference(
        self, speech_tokens: torch.Tensor, ref: dict, n_timesteps: int | None = None, *, solver: str | None = None,
        schedule: str | None = None, sway_coef: float | None = None, cfg_rate: float | None = None,
        noise: torch.Tensor | None = None, f0_smoothing: F0Smoothing | None = None,
        vocoder_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(T,) speech tokens (< vocab_size) -> (1, 2 T * 480) float32 waveform at 24 kHz.

        n_timesteps: flow steps (None: 10, or 2 for the meanflow decoder); solver, schedule, sway_coef, cfg_rate:
        the ODE solve (None: upstream's, see flow.CausalConditionalCFM); noise: starting noise
        (1, 80, 2 (Tp + T)) (None: `draw_noise`, which is upstream's draw); f0_smoothing: HiFT's F0 smoothing
        (None: off, as upstream); vocoder_generator: the random stream of HiFT's source (None: the global RNG,
        as upstream; a call's own stream keeps it reproducible while other threads draw from the global one).
        """
        device = self.trim_fade.device
        tokens = self._check_tokens(speech_tokens)
        prompt_token = ref["prompt_token"].to(device).long()
        if noise is None:
            noise = self.draw_noise(prompt_token.size(1), tokens.size(1))
        mel = self.flow.inference(
            tokens, torch.tensor([tokens.size(1)], device=device),
            prompt_token, ref["prompt_token_len"].to(device).long().reshape(-1),
            ref["prompt_feat"].to(device), ref["embedding"].to(device), n_timesteps=self._steps(n_timesteps),
            noise=noise.to(device), solver=solver, schedule=schedule, sway_coef=sway_coef,
            cfg_rate=cfg_rate,
        )  # (1, 80, 2T)
        return self._finish(self._vocode_rows([mel], f0_smoothing, [vocoder_generator])[0])

    @torch.inference_mode()
    def inference_batch(
        self, speech_tokens: list[torch.Tensor], refs: list[dict], n_timesteps: int | None = None, *,
        solver: str | None = None, schedule: str | None = None, sway_coef: float | None = None,
        cfg_rate: float | None = None, noises: list[torch.Tensor | None] | None = None,
        f0_smoothing: F0Smoothing | None = None, vocoder_generators: list[torch.Generator] | None = None,
    ) -> list[torch.Tensor]:
        """Several chunks, each with its own voice and length, through the flow as one padded batch.

        speech_tokens[i]: (T_i,); refs[i]: its voice (`embed_ref`'s dict); noises[i]: (1, 80, 2 (Tp_i + T_i)) or
        None for `draw_noise` (drawn row after row from the global RNG before any decoding); vocoder_generators:
        each row's HiFT source stream (None: the global RNG). Solve arguments as in `inference`. Returns
        [(1, 2 T_i * 480)] float32 waveforms, each equal to `inference` of that row with the same noise up to float
        rounding.
        """
        if len(speech_tokens) == 0 or len(speech_tokens) != len(refs):
            raise ValueError(f"need one reference per chunk, got {len(speech_tokens)} chunks and "
                             f"{len(refs)} references")
        noises = noises if noises is not None else [None] * len(refs)
        if len(noises) != len(refs):
            raise ValueError(f"need one noise (or None) per chunk, got {len(noises)} for {len(refs)} chunks")
        device = self.trim_fade.device
        tokens = [self._check_tokens(t) for t in speech_tokens]
        prompt_tokens = [ref["prompt_token"].to(device).long()[:, : int(ref["prompt_token_len"].reshape(-1)[0])]
                         for ref in refs]
        prompt_feats = [ref["prompt_feat"].to(device) for ref in refs]
        noises = [self.draw_noise(p.size(1), t.size(1)) if n is None else n.to(device)
                  for n, p, t in zip(noises, prompt_tokens, tokens)]
        mels = self.flow.inference_rows(
            tokens, prompt_tokens, prompt_feats, [ref["embedding"].to(device) for ref in refs], noises,
            self._steps(n_timesteps), solver=solver, schedule=schedule, sway_coef=sway_coef, cfg_rate=cfg_rate)
        return [self._finish(wav) for wav in self._vocode_rows(mels, f0_smoothing, vocoder_generators)]

    def _steps(self, n_timesteps: int | None) -> int:
        return (MEANFLOW_STEPS if self.meanflow else CFM_STEPS) if n_timesteps is None else n_timesteps
