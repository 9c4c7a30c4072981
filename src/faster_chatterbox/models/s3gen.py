"""S3Gen: speech tokens -> 24 kHz waveform, in the voice of a reference clip.

  reference clip --(S3 tokenizer, CAMPPlus, 24 kHz mel)--> prompt tokens, x-vector, prompt mel
  tokens + prompt --(flow: conformer encoder + CFM decoder)--> mel (50 Hz) --(HiFT)--> audio
Attribute names match the official `s3gen.safetensors` keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..audio.mel import s3gen_mel_spectrogram
from ..audio.sinc_resample import sinc_resample
from .campplus import CAMPPlus, CAMPPlusConfig
from .flow import CausalMaskedDiffWithXvec, FlowConfig
from .hift import HiFTConfig, HiFTGenerator
from .s3_tokenizer import S3_SR, S3Tokenizer, S3TokenizerConfig

log = logging.getLogger(__name__)

S3GEN_SR = 24000
TRIM_FADE_SAMPLES = S3GEN_SR // 50  # upstream zeroes the first 20 ms, then fades in over 20 ms


@dataclass
class S3GenConfig:
    tokenizer: S3TokenizerConfig = field(default_factory=S3TokenizerConfig)
    speaker_encoder: CAMPPlusConfig = field(default_factory=CAMPPlusConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)


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
            log.warning("reference mel has %d frames for %d tokens; truncating the tokens to fit",
                        prompt_feat.size(1), tokens.size(1))
            tokens = tokens[:, : prompt_feat.size(1) // 2]
            token_lens = torch.full_like(token_lens, tokens.size(1))
        return dict(prompt_token=tokens, prompt_token_len=token_lens, prompt_feat=prompt_feat,
                    prompt_feat_len=None, embedding=embedding)

    @torch.inference_mode()
    def inference(self, speech_tokens: torch.Tensor, ref: dict, n_timesteps: int = 10) -> torch.Tensor:
        """(T,) speech tokens (< vocab_size) -> (1, 2 T * 480) waveform at 24 kHz."""
        device = self.trim_fade.device
        tokens = speech_tokens.reshape(1, -1).to(device)
        prompt_token = ref["prompt_token"].to(device).long()
        mel = self.flow.inference(
            tokens, torch.tensor([tokens.size(1)], device=device),
            prompt_token, ref["prompt_token_len"].to(device).long().reshape(-1),
            ref["prompt_feat"].to(device), ref["embedding"].to(device), n_timesteps=n_timesteps,
        )  # (1, 80, 2T)
        wav, _ = self.mel2wav.inference(mel)  # (1, 2T * 480)
        wav[:, : self.trim_fade.numel()] *= self.trim_fade  # hide spill-over from the reference clip
        return wav
