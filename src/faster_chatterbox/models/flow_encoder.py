"""S3Gen's upsampling conformer encoder: speech-token embeddings (25 Hz) -> mel-rate features (50 Hz).

Layout (CosyVoice 2 "UpsampleConformerEncoder", pre-norm, no macaron FFN, no conv module):

    linear input layer -> pre-lookahead conv -> 6 conformer blocks
    -> 2x nearest upsample + causal conv -> linear input layer -> 4 conformer blocks -> LayerNorm

The conformer blocks use Transformer-XL relative-position self-attention over ESPnet's
relative sinusoidal encoding (positions T-1 ... -(T-1)) with learned biases `pos_bias_u/v`.
Attribute names follow the official checkpoint (`flow.encoder.*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FlowEncoderConfig:
    input_size: int = 512  # token embedding width; the upsampled stack re-reads hidden_dim, so they must match
    hidden_dim: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    pre_lookahead_len: int = 3
    upsample_stride: int = 2


def rel_position_encoding(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ESPnet relative sinusoidal encoding for relative positions length-1 ... -(length-1): (1, 2*length-1, dim).

    Computed in float32 (like the reference table) and cast to `dtype`.
    """
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)  # (2L-1,)
    angles = positions[:, None] * inv_freq[None, :]  # (2L-1, dim/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # interleaved sin/cos: (2L-1, dim)
    return pe.unsqueeze(0).to(dtype)


class LinearInput(nn.Module):
    """Linear + LayerNorm input layer, scaled by sqrt(dim) (the relative encoding is returned separately)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim, eps=1e-5))
        self.xscale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale  # (B, T, dim)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (content bias u, position bias v)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim); key_mask: (B, 1, T) bool; pos_emb: (1, 2T-1, dim) -> (B, T, dim)."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.linear_q(x).view(B, T, H, D)
        k = self.linear_k(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.linear_v(x).view(B, T, H, D).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, 2 * T - 1, H, D).transpose(1, 2)  # (1, H, 2T-1, D)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, D)
        q_v = (q + self.pos_bias_v).transpose(1, 2)

        # Position term against every relative offset, then the Transformer-XL shift:
        # row i keeps columns T-1-i ... 2T-2-i, i.e. relative positions i-0 ... i-(T-1).
        bd = torch.matmul(q_v, p.transpose(-2, -1))  # (B, H, T, 2T-1), contiguous
        bd = bd.as_strided((B, H, T, T), (bd.stride(0), bd.stride(1), 2 * T - 2, 1), bd.storage_offset() + T - 1)

        scale = 1.0 / math.sqrt(D)
        bias = (bd * scale).masked_fill(~key_mask[:, None], float("-inf"))  # (B, H, T, T)
        out = F.scaled_dot_product_attention(q_u, k, v, attn_mask=bias, scale=scale)  # (B, H, T, D)
        return self.linear_out(out.transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden_dim)
        self.w_2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = RelPositionAttention(dim, num_heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), key_mask, pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """Residual conv pair: one that sees `lookahead` future frames, then a causal kernel-3 conv."""

    def __init__(self, dim: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) -> (B, T, dim)."""
        h = x.transpose(1, 2)  # (B, dim, T)
        h = F.leaky_relu(self.conv1(F.pad(h, (0, self.lookahead))))
        h = self.conv2(F.pad(h, (2, 0)))
        return x + h.transpose(1, 2)


class Upsample1D(nn.Module):
    """Nearest-neighbour repeat by `stride`, then a causal conv of kernel 2*stride+1."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(dim, dim, kernel_size=2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, dim, T) -> (B, dim, stride*T)."""
        x = x.repeat_interleave(self.stride, dim=2)
        return self.conv(F.pad(x, (2 * self.stride, 0)))


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, cfg: FlowEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FlowEncoderConfig()
        dim = cfg.hidden_dim
        self.embed = LinearInput(cfg.input_size, dim)
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)
        self.pre_lookahead_layer = PreLookaheadLayer(dim, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerBlock(dim, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.num_blocks))
        self.up_layer = Upsample1D(dim, cfg.upsample_stride)
        self.up_embed = LinearInput(cfg.input_size, dim)
        self.up_encoders = nn.ModuleList(
            ConformerBlock(dim, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.num_up_blocks)
        )

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, input_size) right-padded; xs_lens: (B,) -> ((B, s*T, dim), valid mask (B, 1, s*T) bool)."""
        T = xs.size(1)
        mask = torch.arange(T, device=xs.device)[None, None, :] < xs_lens[:, None, None]  # (B, 1, T)
        xs = self.embed(xs)
        # The lookahead conv reads future frames: zero the padding so that a sequence's valid frames do not
        # depend on what it was padded with (a no-op for unpadded input).
        xs = self.pre_lookahead_layer(xs * mask.transpose(1, 2).to(xs.dtype))
        pos_emb = rel_position_encoding(T, self.cfg.hidden_dim, xs.device, xs.dtype)
        for block in self.encoders:
            xs = block(xs, mask, pos_emb)

        xs = self.up_layer(xs.transpose(1, 2)).transpose(1, 2)  # (B, s*T, dim)
        T, xs_lens = xs.size(1), xs_lens * self.cfg.upsample_stride
        mask = torch.arange(T, device=xs.device)[None, None, :] < xs_lens[:, None, None]
        xs = self.up_embed(xs)
        pos_emb = rel_position_encoding(T, self.cfg.hidden_dim, xs.device, xs.dtype)
        for block in self.up_encoders:
            xs = block(xs, mask, pos_emb)
        return self.after_norm(xs), mask
