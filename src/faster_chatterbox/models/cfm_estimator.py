"""S3Gen's flow-matching vector-field estimator: a causal 1-D U-Net with transformer blocks.

Input channels are [x_t, mu, speaker, prompt mel] stacked (4 x 80 = 320); output is the velocity (B, 80, T).
With the official single-level config the "U" never changes resolution:

    time:  sinusoid(1000 t) -> MLP (320 -> 1024 -> 1024)      [meanflow: mix(emb(t), emb(r))]
    down:  causal ResNet (320 -> 256) + 4 transformer blocks -> causal conv     (skip saved)
    mid:   12 x [causal ResNet (256 -> 256) + 4 transformer blocks]
    up:    concat skip -> causal ResNet (512 -> 256) + 4 transformer blocks -> causal conv
    out:   causal block -> 1x1 conv to 80 channels

Transformer blocks follow diffusers' BasicTransformerBlock (LayerNorm -> self-attention with inner width
heads * head_dim, LayerNorm -> GELU MLP); attribute names match the official checkpoint
(`flow.decoder.estimator.*`), including the index-named children of upstream's Sequentials.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CFMEstimatorConfig:
    in_channels: int = 320  # x_t, mu, speaker embedding, prompt mel: 4 x 80
    out_channels: int = 80
    hidden_dim: int = 256
    num_heads: int = 8
    head_dim: int = 64
    n_blocks: int = 4  # transformer blocks per U-Net stage
    num_mid_blocks: int = 12
    meanflow: bool = False  # Turbo decoder: adds the interval end time `r` and a time-embedding mixer


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """t: (B,) -> (B, dim) [sin | cos] of scale*t at geometric frequencies 1 ... 1/10000, in float32."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = scale * t.float().reshape(-1, 1) * freqs[None, :]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class CausalConv1d(nn.Conv1d):
    """Stride-1 conv that only sees the current and past frames (left zero padding of kernel_size-1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, T) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalBlock1D(nn.Module):
    """mask -> causal conv3 -> channel LayerNorm -> Mish -> mask."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        # Checkpoint keys are block.0 (conv) and block.2 (norm): upstream's Sequential had transposes in between.
        self.block = nn.Sequential(OrderedDict([("0", CausalConv1d(dim, dim_out, 3)),
                                                ("2", ChannelLayerNorm(dim_out))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.mish(self.block(x * mask)) * mask


class CausalResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x: (B, dim, T); mask: (B, 1, T); t_emb: (B, time_emb_dim) -> (B, dim_out, T)."""
        h = self.block1(x, mask) + self.mlp(t_emb).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class Attention(nn.Module):
    """Bias-free q/k/v projections to heads * head_dim, SDPA, output projection with bias."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim); attn_mask: bool, True = attend, broadcastable to (B, H, T, T) -> (B, T, dim)."""
        B, T, _ = x.shape
        q = self.to_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.to_k(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](out.transpose(1, 2).reshape(B, T, -1))


class GELUProj(nn.Module):
    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # Checkpoint keys are net.0.proj and net.2 (net.1 was a parameter-free dropout).
        self.net = nn.Sequential(OrderedDict([("0", GELUProj(dim, mult * dim)), ("2", nn.Linear(mult * dim, dim))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + GELU MLP (diffusers BasicTransformerBlock, no cross-attention)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), attn_mask)
        return x + self.ff(self.norm3(x))


class ConditionalDecoder(nn.Module):
    """The estimator U-Net, single-level as in the official config (upstream's channels=[256]): its "down" and
    "up" convs keep the frame rate, so one mask serves every stage."""

    def __init__(self, cfg: CFMEstimatorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CFMEstimatorConfig()
        dim, time_dim = cfg.hidden_dim, 4 * cfg.hidden_dim

        def stage(dim_in: int) -> list[nn.Module]:
            blocks = nn.ModuleList(TransformerBlock(dim, cfg.num_heads, cfg.head_dim) for _ in range(cfg.n_blocks))
            return [CausalResnetBlock1D(dim_in, dim, time_dim), blocks]

        self.time_mlp = TimestepEmbedding(cfg.in_channels, time_dim)
        self.down_blocks = nn.ModuleList([nn.ModuleList([*stage(cfg.in_channels), CausalConv1d(dim, dim, 3)])])
        self.mid_blocks = nn.ModuleList(nn.ModuleList(stage(dim)) for _ in range(cfg.num_mid_blocks))
        self.up_blocks = nn.ModuleList([nn.ModuleList([*stage(2 * dim), CausalConv1d(dim, dim, 3)])])
        self.final_block = CausalBlock1D(dim, dim)
        self.final_proj = nn.Conv1d(dim, cfg.out_channels, 1)
        if cfg.meanflow:
            self.time_embed_mixer = nn.Linear(2 * time_dim, time_dim, bias=False)

    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_mlp(sinusoidal_time_embedding(t, self.cfg.in_channels).to(dtype))

    @staticmethod
    def run_stage(
        resnet: nn.Module, blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        x = resnet(x, mask, t_emb).transpose(1, 2).contiguous()  # (B, T, dim)
        for block in blocks:
            x = block(x, attn_mask)
        return x.transpose(1, 2).contiguous()  # (B, dim, T)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, mu, cond: (B, 80, T); mask: (B, 1, T) 0/1; t: (B,) or (1,); spks: (B, 80);
        r: (B,) or (1,) interval end, used only by the meanflow variant -> velocity (B, 80, T)."""
        t_emb = self.embed_time(t, x.dtype)  # (B, 4*hidden)
        if self.cfg.meanflow:
            t_emb = self.time_embed_mixer(torch.cat([t_emb, self.embed_time(r, x.dtype)], dim=1))

        T = x.size(2)
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, T), cond], dim=1)  # (B, in_channels, T)
        attn_mask = mask.bool().unsqueeze(1)  # (B, 1, 1, T): padded keys are excluded

        resnet, blocks, conv = self.down_blocks[0]
        x = self.run_stage(resnet, blocks, x, mask, t_emb, attn_mask)
        skip = x
        x = conv(x * mask)
        for resnet, blocks in self.mid_blocks:
            x = self.run_stage(resnet, blocks, x, mask, t_emb, attn_mask)
        resnet, blocks, conv = self.up_blocks[0]
        x = self.run_stage(resnet, blocks, torch.cat([x, skip], dim=1), mask, t_emb, attn_mask)
        x = conv(x * mask)
        x = self.final_block(x, mask)
        return self.final_proj(x * mask) * mask
