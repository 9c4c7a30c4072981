"""S3 speech tokenizer v2 ("speech_tokenizer_v2_25hz"): 16 kHz speech -> 25 Hz ids in [0, 3**8).

Chatterbox tokenizes its 16 kHz reference clip with it (``S3Gen().tokenizer``; weights are the
``tokenizer.*`` keys of s3gen.safetensors). Pipeline:

  wav (T,) -> log-mel (128, T // 160) at 100 Hz
           -> two stride-2 convs (25 Hz) -> 6 pre-LN blocks of rotary attention + FSMN memory + MLP
           -> FSQ: project to 8 dims, squash each to {-1, 0, 1}, read the digits as a base-3 number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faster_chatterbox.audio.mel import mel_filterbank

S3_SR = 16_000
S3_HOP = 160  # mel frames at 100 Hz
S3_TOKEN_RATE = 25  # tokens per second: 4 mel frames per token
MEL_FRAMES_PER_TOKEN = 4
SPEECH_VOCAB_SIZE = 3**8  # 6561

# quantize() cuts mels longer than this into overlapping windows and stitches their tokens.
_WINDOW_FRAMES = 3000  # 30 s
_OVERLAP_FRAMES = 400  # 4 s
_OVERLAP_TOKENS = 50  # tokens dropped at each side of an overlap (2 s)


@dataclass
class S3TokenizerConfig:
    n_mels: int = 128
    n_fft: int = 400
    n_audio_state: int = 1280
    n_audio_head: int = 20  # head_dim 64
    n_audio_layer: int = 6
    fsmn_kernel_size: int = 31
    fsq_levels: int = 3  # values per FSQ digit
    fsq_dim: int = 8  # FSQ digits per token: fsq_levels ** fsq_dim = 6561 codes
    rope_theta: float = 10000.0
    rope_max_positions: int = 2048


def _padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _conv_out_len(n: torch.Tensor) -> torch.Tensor:
    """Output length of a kernel-3, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


class LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class FSMNAttention(nn.Module):
    """Multi-head attention with rotary q/k, plus a depthwise-conv memory (FSMN) over the values."""

    def __init__(self, dim: int, n_head: int, kernel_size: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.fsmn_block = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        self.fsmn_pad = ((kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); mask: (B, T) bool; cos, sin: (T, head_dim)
        B, T, D = x.shape
        q = self.query(x).view(B, T, self.n_head, -1)  # (B, T, H, Dh)
        k = self.key(x).view(B, T, self.n_head, -1)
        v = self.value(x)  # (B, T, D)

        cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin

        # FSMN memory: the masked values through a centred depthwise conv, plus the values again.
        pad = mask[:, :, None].to(x.dtype)  # (B, T, 1)
        v_masked = v * pad
        memory = self.fsmn_block(F.pad(v_masked.transpose(1, 2), self.fsmn_pad)).transpose(1, 2)
        memory = (memory + v_masked) * pad  # (B, T, D)

        # Attention; q and k each carry half of the 1/sqrt(head_dim) scale.
        scale = (D // self.n_head) ** -0.25
        q = q.transpose(1, 2) * scale  # (B, H, T, Dh)
        k = k.permute(0, 2, 3, 1) * scale  # (B, H, Dh, T)
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, H, T, Dh)
        scores = (q @ k).float().masked_fill(~mask[:, None, None, :], -1e10)  # (B, H, T, T)
        attn = scores.softmax(dim=-1).to(x.dtype) @ v  # (B, H, T, Dh)
        return self.out(attn.transpose(1, 2).reshape(B, T, D)) + memory


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, kernel_size: int):
        super().__init__()
        self.attn = FSMNAttention(dim, n_head, kernel_size)
        self.attn_ln = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mlp_ln = LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), mask, cos, sin)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoderV2(nn.Module):
    """Log-mel (100 Hz) -> hidden states (25 Hz)."""

    def __init__(self, cfg: S3TokenizerConfig):
        super().__init__()
        dim = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dim, cfg.n_audio_head, cfg.fsmn_kernel_size) for _ in range(cfg.n_audio_layer))

        # Rotary tables, built with torch.polar as the checkpoint's reference code does (its cos/sin
        # differ from torch.cos/torch.sin by an ulp, which can flip an FSQ rounding).
        head_dim = dim // cfg.n_audio_head
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(cfg.rope_max_positions).float(), inv_freq)  # (P, Dh / 2)
        rot = torch.view_as_real(torch.polar(torch.ones_like(angles), angles))  # (P, Dh / 2, 2)
        self.register_buffer("rope_cos", rot[..., 0].repeat(1, 2), persistent=False)  # (P, Dh)
        self.register_buffer("rope_sin", rot[..., 1].repeat(1, 2), persistent=False)  # (P, Dh)

    def forward(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mels: (B, n_mels, T); mel_lens: (B,) -> hidden (B, T', D), lens (B,) with T' ~ T / 4
        x = mels.to(self.conv1.weight.dtype)
        lens = mel_lens
        for conv in (self.conv1, self.conv2):
            x = F.gelu(conv(x * _padding_mask(lens, x.shape[-1])[:, None, :]))
            lens = _conv_out_len(lens)
        x = x.transpose(1, 2)  # (B, T', D)

        T = x.shape[1]
        mask = _padding_mask(lens, T)  # (B, T')
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            x = block(x, mask, cos, sin)
        return x, lens


class FSQCodebook(nn.Module):
    """Finite scalar quantization: each of fsq_dim projections becomes a digit in {0, 1, 2}."""

    def __init__(self, dim: int, levels: int, n_digits: int):
        super().__init__()
        self.project_down = nn.Linear(dim, n_digits)
        self.register_buffer("digit_weights", levels ** torch.arange(n_digits), persistent=False)  # (n_digits,)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (B, T, D) -> ids (B, T) long; digit i has weight 3**i
        h = self.project_down(hidden).float().tanh()
        digits = (h * 0.9990000128746033).round().long() + 1  # (B, T, n_digits) in {0, 1, 2}
        return (digits * self.digit_weights).sum(dim=-1)


class S3Tokenizer(nn.Module):
    """S3 tokenizer v2 with its own log-mel front end.

    State-dict keys equal upstream's except the recomputable mel filters and window, which are
    non-persistent buffers here.
    """

    def __init__(self, cfg: S3TokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or S3TokenizerConfig()
        self.encoder = AudioEncoderV2(cfg)
        # container named so the checkpoint path `quantizer._codebook.project_down.*` loads
        self.quantizer = nn.ModuleDict({"_codebook": FSQCodebook(cfg.n_audio_state, cfg.fsq_levels, cfg.fsq_dim)})
        self.register_buffer("_mel_filters", mel_filterbank(S3_SR, cfg.n_fft, cfg.n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def log_mel_spectrogram(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(..., T) 16 kHz wav -> (..., n_mels, T // 160) log-mel, floored at 8 (log10) below its max."""
        wav = torch.as_tensor(wav).to(self.window.device)
        spec = torch.stft(wav, self.cfg.n_fft, S3_HOP, window=self.window.to(wav.dtype), return_complex=True)
        power = spec[..., :-1].abs() ** 2  # (..., n_fft // 2 + 1, frames); last frame dropped
        mel = self._mel_filters.to(power.dtype) @ power
        log_mel = mel.clamp(min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
        return (log_mel + 4.0) / 4.0

    def quantize(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) zero-padded log-mels, (B,) lengths -> ids (B, T') long, lens (B,) long.

        Mels over 30 s are tokenized in overlapping 30 s windows (see _quantize_windowed).
        """
        if bool((mel_lens > _WINDOW_FRAMES).any()):
            return self._quantize_windowed(mels, mel_lens)
        hidden, lens = self.encoder(mels, mel_lens)
        return self.quantizer["_codebook"](hidden), lens.long()

    def _quantize_windowed(self, mels: torch.Tensor, mel_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch with a clip over 30 s: every clip is split into 30 s windows 26 s apart (a shorter
        clip is one window), all windows run as one batch padded to 30 s, and a long clip's
        window tokens are joined dropping 2 s at each inner side of every overlap.
        Positions past a clip's length are 0 in the output."""
        stride = _WINDOW_FRAMES - _OVERLAP_FRAMES
        windows, window_lens, owner = [], [], []  # owner: clip index of each window
        for b, n in enumerate(mel_lens.tolist()):
            for start in range(0, n, stride) if n > _WINDOW_FRAMES else [0]:
                window = mels[b, :, start:min(start + _WINDOW_FRAMES, n)]
                windows.append(F.pad(window, (0, _WINDOW_FRAMES - window.shape[-1])))
                window_lens.append(window.shape[-1])
                owner.append(b)
        hidden, lens = self.encoder(torch.stack(windows), torch.tensor(window_lens, device=mels.device))
        ids = self.quantizer["_codebook"](hidden)

        per_clip: list[list[torch.Tensor]] = [[] for _ in range(mels.shape[0])]
        for w, b in enumerate(owner):
            per_clip[b].append(ids[w, : int(lens[w])])
        merged = []
        for pieces in per_clip:  # a long clip always has 2+ windows
            last = len(pieces) - 1
            merged.append(torch.cat([
                p[(0 if i == 0 else _OVERLAP_TOKENS):(None if i == last else -_OVERLAP_TOKENS)]
                for i, p in enumerate(pieces)]))
        out_lens = torch.tensor([len(m) for m in merged], device=mels.device)
        out = torch.zeros(len(merged), int(out_lens.max()), dtype=torch.long, device=mels.device)
        for b, m in enumerate(merged):
            out[b, : len(m)] = m
        return out, out_lens

    @torch.inference_mode()
    def forward(self, wavs: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
                max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz wavs (a list of (T_i,) or a (B, T) tensor) -> ids (B, T') long, lens (B,) long.

        Each wav gets its own log-mel (own max floor); max_len truncates to max_len tokens
        (4 * max_len mel frames) before the mels are zero-padded into a batch.
        """
        mels = []
        for wav in wavs:
            mel = self.log_mel_spectrogram(torch.as_tensor(wav).reshape(1, -1))[0]  # (n_mels, frames)
            if max_len is not None:
                mel = mel[:, : max_len * MEL_FRAMES_PER_TOKEN]
            mels.append(mel)
        mel_lens = torch.tensor([m.shape[-1] for m in mels], device=self.window.device)
        batch = nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)  # (B, n_mels, T)
        return self.quantize(batch, mel_lens)
