"""GPT-2 backbone of Chatterbox-Turbo's and -Nano's T3: input embeddings in, final-norm hidden states out.

The same decode contract as models/llama.py, so the same decoders (engine/t3_decode.py, the continuous
batching of engine/batch_decode.py) run it: the module holds only weights, the decode state is a
`LlamaCache` value (the KV storage; a GPT-2 cache carries no RoPE tables) made by `GPT2.new_cache`, and
`forward(x, input_pos, cache, kv_len, seq_start, rows)` has `Llama.forward`'s meaning. GPT-2 differs in
the block, not the contract: learned absolute positions (`wpe`, each row's counted from its own
`seq_start`) added to the input, pre-LayerNorm blocks with biases, GELU (tanh form, Hugging Face's
"gelu_new") in the MLP, and one fused q/k/v projection.

Parameter names follow Hugging Face's `GPT2Model` (Conv1D weights stored (in, out)) so that
t3_turbo_v1.safetensors / t3_nano_v1.safetensors load unchanged. The checkpoint's `wte` token table is
never used (T3 feeds embeddings; upstream deletes it after loading) and is not a parameter here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .llama import KVCache, LlamaCache, SharedPrefix, attend_with_prefix, positions_and_mask


@dataclass
class GPT2Config:
    dim: int = 1024  # GPT-2 medium (Turbo); small (Nano): 768
    n_layers: int = 24
    n_heads: int = 16
    max_positions: int = 8196  # rows of the learned position table (n_positions)
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:  # the cache's layout: every head has its own keys and values
        return self.n_heads

    @property
    def ffn_dim(self) -> int:
        return 4 * self.dim


class Conv1D(nn.Module):
    """GPT-2's linear layer, weight stored (in, out) as the checkpoint holds it: y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out); addmm as Hugging Face's Conv1D, so that equal inputs give equal outputs
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.c_attn = Conv1D(cfg.dim, 3 * cfg.dim)  # q, k, v fused
        self.c_proj = Conv1D(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor, cache: KVCache, rows: slice,
                prefix: tuple[Tensor, Tensor, SharedPrefix] | None = None) -> Tensor:
        # x: (B, S, D) for cache rows `rows`; input_pos: (S,); mask: (S, kv_len) or (B, 1, S, kv_len) bool
        # (with `prefix`: its additive `own_key_bias`); prefix: this layer's part of a shared prefix
        # (models/llama.py: `attend_with_prefix`)
        B, S, D = x.shape
        q, k, v = (t.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
                   for t in self.c_attn(x).split(D, dim=2))  # (B, H, S, hd) each
        k_all, v_all = cache.update(input_pos, k, v, rows)  # (B, H, max_seq_len, hd)
        kv_len = mask.shape[-1]
        # in the cache's dtype, as models/llama.py: a float32 cache under bf16 weights is faster on CPU
        q, k_all, v_all = q.to(k_all.dtype), k_all[:, :, :kv_len], v_all[:, :, :kv_len]
        y = (attend_with_prefix(q, k_all, v_all, mask, *prefix)[0] if prefix is not None
             else F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask))  # (B, H, S, hd)
        return self.c_proj(y.to(x.dtype).transpose(1, 2).reshape(B, S, D))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.dim, cfg.ffn_dim)
        self.c_proj = Conv1D(cfg.ffn_dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, input_pos: Tensor, mask: Tensor, cache: KVCache, rows: slice,
                prefix: tuple[Tensor, Tensor, SharedPrefix] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), input_pos, mask, cache, rows, prefix)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.cfg = cfg
        self.wpe = nn.Embedding(cfg.max_positions, cfg.dim)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.kv_dtype: torch.dtype | None = None  # dtype of the caches new_cache makes; None: the weights'

    def new_cache(self, batch: int, max_seq_len: int, dtype: torch.dtype | None = None) -> LlamaCache:
        """As `Llama.new_cache`: `batch` rows of `max_seq_len` uninitialized slots on the weights' device."""
        if max_seq_len > self.cfg.max_positions:
            raise ValueError(f"a GPT-2 sequence has at most {self.cfg.max_positions} positions, asked {max_seq_len}")
        weight = self.ln_f.weight
        return LlamaCache(self.cfg, batch, max_seq_len, dtype or self.kv_dtype or weight.dtype, weight.device)

    def forward(self, x: Tensor, input_pos: Tensor, cache: LlamaCache, kv_len: int | None = None,
                seq_start: Tensor | None = None, rows: slice = slice(None), probe: None = None,
                shared: SharedPrefix | None = None) -> Tensor:
        """x: (B, S, D) input embeddings at cache slots input_pos (S,) -> final-norm hidden states (B, S, D).

        As `Llama.forward`: keys and values written at input_pos in cache rows `rows`, attention over slots
        [0, kv_len) causally masked; seq_start (B,): each row's first slot (left padding), its positions
        counted from there (Hugging Face's positions of an unpadded sequence: 0, 1, ...). probe: Llama's
        attention probe (the multilingual alignment guard) has no GPT-2 counterpart; it must be None.
        shared: as Llama's, a `SharedPrefix` each row's sequence begins with, its positions going on from there.
        """
        if probe is not None:
            raise ValueError("attention probes (the alignment guard) need the Llama backbone")
        pos, mask = positions_and_mask(input_pos, kv_len or cache.max_seq_len, seq_start)
        if shared is not None:
            pos = pos + shared.row_offset[:, None]  # (B, S)
            mask = shared.own_key_bias(mask)  # the additive form attend_with_prefix takes, made once
        x = x + self.wpe(pos).to(x.dtype)  # (S, D) or (B, S, D)
        for i, (block, layer_cache) in enumerate(zip(self.h, cache.layers)):
            x = block(x, input_pos, mask, layer_cache, rows, (*shared.layers[i], shared) if shared is not None else None)
        return self.ln_f(x)
