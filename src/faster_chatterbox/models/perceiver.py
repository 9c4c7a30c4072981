"""Perceiver resampler of T3's conditioning encoder: any number of prompt-speech embeddings -> 32 latents.

Learned queries cross-attend to the prompt, then the result self-attends; both passes share one
pre-norm attention block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionBlock(nn.Module):
    """Pre-LayerNorm multi-head attention with a residual on the query side."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        # (B, T, D) -> (B, H, T, D/H)
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # x: (B, Tq, D) queries; context: (B, Tk, D) keys/values -> (B, Tq, D)
        xn, cn = self.norm(x), self.norm(context)
        q, k, v = self._heads(self.to_q(xn)), self._heads(self.to_k(cn)), self._heads(self.to_v(cn))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, Tq, D/H)
        return x + self.proj_out(y.transpose(1, 2).flatten(2))


class Perceiver(nn.Module):
    def __init__(self, dim: int = 1024, n_queries: int = 32, n_heads: int = 4):
        super().__init__()
        self.pre_attention_query = nn.Parameter(torch.zeros(1, n_queries, dim))
        self.attn = AttentionBlock(dim, n_heads)

    def forward(self, h: Tensor) -> Tensor:
        # h: (B, T, D) -> (B, n_queries, D)
        latents = self.attn(self.pre_attention_query.expand(h.shape[0], -1, -1), h)
        return self.attn(latents, latents)
