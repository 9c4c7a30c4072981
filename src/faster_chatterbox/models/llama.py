"""Llama backbone of T3, gpt-fast style: input embeddings in, final-norm hidden states out.

The module holds only weights. The decode state is a value, a `LlamaCache` made by `Llama.new_cache`
(preallocated KV storage for (batch, max_seq_len) and the RoPE tables of its slots) and passed to every
forward, so any number of decoders (threads) can run one model at once, each with its own cache. A forward
writes its keys/values at `input_pos` and attends over cache slots [0, kv_len) with a causal mask built
from the positions. Parameter names follow Hugging Face's `LlamaModel` so T3's checkpoint loads unchanged.

Batches of independent sequences are left-padded: `seq_start` (B,) gives each row's first cache slot, RoPE
positions count from there and the padding slots are masked out; `LlamaCache.keep_rows` drops finished rows.
Or every row is at its own position: `input_pos` (B, S) gives each row's slots (a static cache whose rows
are the slots of a continuous batch, each sequence from slot 0); the mask and RoPE come from the positions
on the device, the keys are scattered to them, so a decode step has one shape whatever the rows' lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LlamaConfig:
    dim: int = 1024
    n_layers: int = 30
    n_heads: int = 16
    n_kv_heads: int = 16
    head_dim: int = 64
    ffn_dim: int = 4096
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    # Llama 3 frequency rescaling of RoPE
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_pos: int = 8192
    # `embed_tokens` is never used (T3 feeds embeddings), but the checkpoint holds it.
    vocab_size: int = 8


def llama3_inv_freq(cfg: LlamaConfig, device: torch.device | None = None) -> Tensor:
    """RoPE inverse frequencies with Llama 3 scaling, computed in float32 as Hugging Face does. (head_dim/2,)"""
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float32)
    inv_freq = 1.0 / (cfg.rope_theta ** (exponents / cfg.head_dim))
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = cfg.rope_original_max_pos / cfg.rope_low_freq_factor
    high_freq_wavelen = cfg.rope_original_max_pos / cfg.rope_high_freq_factor
    # long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (cfg.rope_original_max_pos / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
    )
    interpolated = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    in_band = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(in_band, interpolated, scaled)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, H, S, head_dim); cos, sin: (S, head_dim), or (B, 1, S, head_dim) for per-row positions
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Hugging Face's: normalized in float32, cast back, then scaled. F.rms_norm computes that normalization
        # bit for bit in one op instead of five (each a dispatch, 61 per decode step).
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rope_tables(inv_freq: Tensor, max_seq_len: int) -> tuple[Tensor, Tensor]:
    """cos, sin (max_seq_len, head_dim) of positions 0 .. max_seq_len - 1, in float32 whatever the model dtype
    (cast on use, as Hugging Face does). inv_freq: (head_dim/2,)"""
    return rope_at(inv_freq, torch.arange(max_seq_len, device=inv_freq.device))


def rope_at(inv_freq: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin (*positions.shape, head_dim) of any positions, float32: the tables' values, computed alone."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


class KVCache:
    """One layer's keys and values, `k` and `v` (batch, n_kv_heads, slots, head_dim): views of the first rows
    of a storage that may hold more rows and slots (a batch that shrank keeps its allocation).

    The storage is allocated uninitialized (zeroing half a gigabyte per decode costs up to a second on CPU):
    attention reads slots [0, kv_len), masked ones included, and 0 * NaN would poison the output, so every
    user writes a slot before reading it (a prefill writes [0, P), each step its own slot), and rows joining
    a batch, whose slots before their prefill are read masked, are zeroed (`set_batch`).
    """

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        self._k_store = torch.empty(shape, dtype=dtype, device=device)
        self._v_store = torch.empty(shape, dtype=dtype, device=device)
        self.k, self.v = self._k_store, self._v_store

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        # input_pos: (S,) or (B, S) per row; k, v: (B, H_kv, S, head_dim) for cache rows `rows`, cast to the
        # cache's dtype
        k_cache, v_cache = self.k[rows], self.v[rows]
        if input_pos.dim() == 2:
            # An indexed assignment (index_put_), not a scatter_: under torch.compile inductor writes it in
            # place, where a scatter_ made it copy every layer's whole cache at every step (BENCHMARKS.md 38).
            row = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1), against input_pos (B, S)
            k_cache[row, :, input_pos] = k.transpose(1, 2).to(k_cache.dtype)  # (B, S, H_kv, head_dim)
            v_cache[row, :, input_pos] = v.transpose(1, 2).to(v_cache.dtype)
        else:
            k_cache.index_copy_(2, input_pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, input_pos, v.to(v_cache.dtype))
        return k_cache, v_cache

    def reserve(self, batch: int, max_seq_len: int) -> None:
        """Make the storage hold at least `batch` rows of `max_seq_len` slots, keeping the live rows (which
        stay the live ones; their new slots are uninitialized). Both new stores are allocated before either
        replaces the old one, so a failed allocation leaves the layer as it was."""
        store_batch, heads, store_len, head_dim = self._k_store.shape
        if batch <= store_batch and max_seq_len <= store_len:
            return
        shape = (max(batch, store_batch), heads, max(max_seq_len, store_len), head_dim)
        k_store, v_store = self._k_store.new_empty(shape), self._v_store.new_empty(shape)
        live = self.k.shape[0]
        k_store[:live, :, :store_len] = self.k
        v_store[:live, :, :store_len] = self.v
        self._k_store, self._v_store = k_store, v_store
        self.k, self.v = k_store[:live], v_store[:live]

    def set_batch(self, batch: int) -> None:
        """Make the first `batch` rows of the storage (reserved) the live ones; rows that join are zeroed
        (all their slots: those before their prefill are read, masked)."""
        self._k_store[self.k.shape[0] : batch].zero_()
        self._v_store[self.k.shape[0] : batch].zero_()
        self.k, self.v = self._k_store[:batch], self._v_store[:batch]

    def keep_rows(self, rows: list[int], kv_len: int) -> None:
        """Row i takes row rows[i]'s first kv_len slots, in place; the live rows become the first len(rows)."""
        moved = [i for i, row in enumerate(rows) if row != i]
        if moved:
            dst = torch.tensor(moved, device=self.k.device)
            src = torch.tensor([rows[i] for i in moved], device=self.k.device)
            for cache in (self.k, self.v):
                cache[dst, :, :kv_len] = cache[src, :, :kv_len]  # the right side is gathered first
        self.k, self.v = self.k[: len(rows)], self.v[: len(rows)]


class LlamaCache:
    """The decode state of one batch of sequences: every layer's `KVCache` and the RoPE tables of the
    slots, (batch, max_seq_len) of them. Made by `Llama.new_cache`; one decoder uses it at a time.

    Its tensors are normal ones even when made under inference_mode, so that forwards may run either way.
    """

    def __init__(self, cfg: LlamaConfig, batch: int, max_seq_len: int, dtype: torch.dtype, device: torch.device):
        with torch.inference_mode(False):
            self.layers = [KVCache(batch, cfg.n_kv_heads, max_seq_len, cfg.head_dim, dtype, device)
                           for _ in range(cfg.n_layers)]
            # (head_dim/2,); None for a backbone with learned positions instead of RoPE (models/gpt2.py)
            self.inv_freq = llama3_inv_freq(cfg, device) if isinstance(cfg, LlamaConfig) else None
            self.rope_cos, self.rope_sin = (rope_tables(self.inv_freq, max_seq_len) if self.inv_freq is not None
                                            else (None, None))  # (max_seq_len, head_dim)
        self.batch, self.max_seq_len = batch, max_seq_len

    @property
    def dtype(self) -> torch.dtype:
        """The keys' and values' dtype, which attention runs in."""
        return self.layers[0].k.dtype

    def resize(self, batch: int, max_seq_len: int) -> None:
        """Grow or shrink the batch to `batch` rows with room for at least `max_seq_len` slots, keeping what
        the current rows hold (rows joining a running batch; a batch outgrowing its slots). Reuses the
        allocation when it is large enough. If an allocation fails the cache keeps its rows and slots."""
        with torch.inference_mode(False):
            grown = max_seq_len > self.max_seq_len and self.inv_freq is not None
            tables = rope_tables(self.inv_freq, max_seq_len) if grown else (self.rope_cos, self.rope_sin)
            for layer in self.layers:
                layer.reserve(batch, max_seq_len)
            # nothing below allocates: every layer has the room
            for layer in self.layers:
                layer.set_batch(batch)
        self.rope_cos, self.rope_sin = tables
        self.batch, self.max_seq_len = batch, max(max_seq_len, self.max_seq_len)

    def shift(self, offset: int, kv_len: int) -> None:
        """Move every row's slots [0, kv_len) `offset` slots to the left, dropping the first `offset` (a batch
        whose oldest sequence starts there gives them back), or, negative, to the right (room in front for a
        longer sequence; the cache must hold kv_len - offset slots, and the slots in front, which attention
        reads masked, are zeroed). Callers shift their positions too. If the one buffer it needs cannot be
        allocated, nothing has moved."""
        src, dst = max(offset, 0), max(-offset, 0)
        n = kv_len - src
        with torch.inference_mode(False):
            first = self.layers[0].k
            buffer = first.new_empty(first.shape[0], first.shape[1], n, first.shape[3])  # source and target overlap
            for layer in self.layers:
                for cache in (layer.k, layer.v):
                    buffer.copy_(cache[:, :, src:kv_len])
                    cache[:, :, dst : dst + n].copy_(buffer)
                    cache[:, :, :dst].zero_()  # beyond the old history when moved further than it: unwritten

    def write_rows(self, rows: Tensor | slice, source: LlamaCache, start: int = 0) -> None:
        """Rows `rows` of this cache take `source`'s slots [0, source.max_seq_len) at [start, start + that): a
        prefill made in a cache of its own moving into a static batch's rows, a batch into a larger one (one
        source row per row), or a voice's conditioning prefix, computed once, under every sequence that
        begins with it (one source row for all)."""
        n = source.max_seq_len
        with torch.inference_mode(False):
            for layer, src in zip(self.layers, source.layers):
                layer.k[rows, :, start : start + n] = src.k
                layer.v[rows, :, start : start + n] = src.v

    def zero_slots(self, rows: slice, end: int) -> None:
        """Zero rows `rows` at slots [0, end): slots a forward reads masked without writing (`KVCache`)."""
        with torch.inference_mode(False):
            for layer in self.layers:
                layer.k[rows, :, :end].zero_()
                layer.v[rows, :, :end].zero_()

    def keep_rows(self, rows: list[int], kv_len: int | None = None) -> None:
        """Shrink the batch to len(rows) rows: row i takes what row rows[i] held in cache slots [0, kv_len)
        (default: all). Only rows that change are copied, in place, so dropping finished sequences by
        moving a few tail rows into their places costs little."""
        kv_len = kv_len or self.max_seq_len
        with torch.inference_mode(False):  # normal tensors and views, as the cache was made
            for layer in self.layers:
                layer.keep_rows(rows, kv_len)
        self.batch = len(rows)


@dataclass
class AttentionProbe:
    """Asks a forward for the attention weights of a few heads from its last query position, in float32
    (softmax over the unmasked keys, as eager attention computes them): after the forward, `weights` holds one
    (B, kv_len) tensor per requested head, in layer order. heads: {layer index: head indices}."""

    heads: dict[int, tuple[int, ...]]
    weights: list[Tensor] = field(default_factory=list)

    def at(self, layer: int) -> LayerProbe | None:
        heads = self.heads.get(layer)
        return None if heads is None else LayerProbe(heads, self.weights)


@dataclass
class LayerProbe:
    """One layer's part of an `AttentionProbe`: records into its `weights`."""

    heads: tuple[int, ...]
    weights: list[Tensor]

    def from_keys(self, q: Tensor, k: Tensor, mask: Tensor) -> None:
        # q: (B, H, S, hd); k: (B, H_kv, kv_len, hd); mask: (S, kv_len) or (B, 1, S, kv_len)
        group = q.shape[1] // k.shape[1]
        for head in self.heads:
            scores = q[:, head, -1:].float() @ k[:, head // group].float().transpose(-1, -2)  # (B, 1, kv_len)
            scores = scores / math.sqrt(q.shape[-1])
            visible = mask[..., -1:, :].reshape(-1, 1, mask.shape[-1])  # (1 or B, 1, kv_len)
            self.weights.append(scores.masked_fill(~visible, -math.inf).softmax(dim=-1)[:, 0])

    def from_weights(self, attention: Tensor) -> None:
        # attention: (B, H, S, kv_len), softmax already taken (over a shared prefix too: `attend_with_prefix`)
        for head in self.heads:
            self.weights.append(attention[:, head, -1].float())


@dataclass
class SharedPrefix:
    """Keys and values that groups of a forward's rows share in front of their own cache slots (a voice's
    conditioning under every sequence in that voice, engine/batch_decode.py): attention reads them once per
    group instead of once per row, and the rows' caches hold only what follows them.

    layers[i] = (k, v) of layer i, (G, H_kv, P, hd): group g's prefix in its first lengths[g] slots (zero and
    masked past them). row_group, row_rank (B,): each row's group and its place among the group's rows;
    members (G, M): each group's rows, padded with row 0 (M: the largest group). A row's positions go on
    from its group's prefix: its first own slot is position lengths[row_group]. key_bias (G, 1, 1, P): 0 on
    each group's slots, -inf past them, added to the prefix's scores (made once, not in every layer's step).
    Made by `of`.
    """

    layers: list[tuple[Tensor, Tensor]]
    lengths: Tensor  # (G,) long
    row_group: Tensor  # (B,) long
    row_rank: Tensor  # (B,) long
    members: Tensor  # (G, M) long
    key_bias: Tensor  # (G, 1, 1, P), the keys' dtype

    @classmethod
    def of(cls, prefixes: list[LlamaCache], row_group: list[int],
           layers: list[tuple[Tensor, Tensor]] | None = None) -> SharedPrefix:
        """prefixes: each group's prefix, a 1-row cache of exactly its slots; row_group[b]: row b's group.
        layers: those of an earlier SharedPrefix of the same prefixes (not stacked again)."""
        first = prefixes[0].layers[0].k
        lengths = [p.max_seq_len for p in prefixes]
        if layers is None:
            layers = cls._stack(prefixes, lengths)
        rank, seen = [], [0] * len(prefixes)
        for g in row_group:
            rank.append(seen[g])
            seen[g] += 1
        members = [[0] * max(seen) for _ in prefixes]
        for b, (g, r) in enumerate(zip(row_group, rank)):
            members[g][r] = b
        as_long = lambda values: torch.tensor(values, dtype=torch.long, device=first.device)  # noqa: E731
        valid = torch.arange(max(lengths), device=first.device) < as_long(lengths)[:, None]  # (G, P)
        key_bias = torch.zeros(valid.shape, dtype=first.dtype, device=first.device).masked_fill_(~valid, -math.inf)
        return cls(layers, as_long(lengths), as_long(row_group), as_long(rank), as_long(members),
                   key_bias[:, None, None])

    @staticmethod
    def _stack(prefixes: list[LlamaCache], lengths: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Each layer's prefixes as one (G, H_kv, P, hd) pair, right-padded with zeros; one group: its own."""
        if len(prefixes) == 1:
            return [(layer.k, layer.v) for layer in prefixes[0].layers]  # no copy
        layers = []
        for per_group in zip(*(p.layers for p in prefixes)):
            _, heads, _, head_dim = per_group[0].k.shape
            k = per_group[0].k.new_zeros(len(prefixes), heads, max(lengths), head_dim)
            v = torch.zeros_like(k)
            for g, layer in enumerate(per_group):
                k[g, :, : lengths[g]], v[g, :, : lengths[g]] = layer.k[0], layer.v[0]
            layers.append((k, v))
        return layers

    @property
    def row_offset(self) -> Tensor:
        """(B,) each row's prefix length: the position of its first own slot."""
        return self.lengths[self.row_group]

    def own_key_bias(self, mask: Tensor) -> Tensor:
        """The rows' mask over their own slots, (S, L) or (B, 1, S, L) bool, as the additive bias (B, 1, S, L)
        in the keys' dtype (0 where seen, -inf where hidden) that `attend_with_prefix` takes: made once per
        forward, not in every layer."""
        B, (S, L) = self.row_group.shape[0], mask.shape[-2:]
        bias = torch.zeros((B, 1, S, L), dtype=self.key_bias.dtype, device=mask.device)
        return bias.masked_fill_(~mask, -math.inf)


def attend_with_prefix(q: Tensor, k: Tensor, v: Tensor, own_bias: Tensor, prefix_k: Tensor, prefix_v: Tensor,
                       shared: SharedPrefix, weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Softmax attention of q over [its group's shared prefix, its own keys], as if they were one sequence.

    q: (B, H, S, hd); k, v: (B, H_kv, L, hd) the rows' own slots; own_bias (B, 1, S, L) added to the scores on
    them (`SharedPrefix.own_key_bias`: 0 where a query sees a slot, -inf where not); prefix_k, prefix_v:
    (G, H_kv, P, hd), `shared`'s layer. Returns y (B, H, S, hd) and, with `weights`, the
    attention on the own slots (B, H, S, L) (what a probe records). The prefix is read once per group, all
    its rows' queries at once, instead of once per row.

    On CPU (no weights asked) the two parts run on torch's flash kernel, which also gives each query's
    log-sum-exp, and are merged by their softmax mass: y = y_own + (y_prefix - y_own) * sigmoid(lse_prefix -
    lse_own). Elsewhere, or with `weights`, one softmax over the concatenated scores (plain matmuls).
    """
    B, H, S, hd = q.shape
    if H != k.shape[1]:  # grouped-query attention: each key head serves H / H_kv query heads
        k, v, prefix_k, prefix_v = (t.repeat_interleave(H // k.shape[1], dim=1) for t in (k, v, prefix_k, prefix_v))
    G, M = shared.members.shape
    P = prefix_k.shape[2]
    grouped_q = q[shared.members.view(-1)].view(G, M, H, S, hd).transpose(1, 2).reshape(G, H, M * S, hd)

    def to_rows(grouped: Tensor) -> Tensor:  # (G, H, M * S, ...) -> (B, H, S, ...): each row's own queries
        return grouped.view(G, H, M, S, *grouped.shape[3:])[shared.row_group, :, shared.row_rank]

    if q.device.type == "cpu" and not weights:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # (output, log-sum-exp)
        y_prefix, lse_prefix = flash(grouped_q, prefix_k, prefix_v, attn_mask=shared.key_bias)[:2]
        y_own, lse_own = flash(q, k, v, attn_mask=own_bias)[:2]
        share = torch.sigmoid(to_rows(lse_prefix[..., None])[..., 0] - lse_own)  # (B, H, S)
        return torch.lerp(y_own, to_rows(y_prefix), share[..., None]), None
    scale = 1 / math.sqrt(hd)
    # keys on the left of the matmuls: a GEMV over the keys per head (a small-M GEMM against transposed keys
    # is several times slower with MKL on CPU)
    own = (k @ q.transpose(-1, -2)).transpose(-1, -2) * scale  # (B, H, S, L)
    on_prefix = (prefix_k @ grouped_q.transpose(-1, -2)).transpose(-1, -2) * scale  # (G, H, M * S, P)
    on_prefix = to_rows(on_prefix + shared.key_bias)  # (B, H, S, P)
    attention = torch.cat((on_prefix, own + own_bias), dim=-1).softmax(dim=-1)
    on_prefix, on_own = attention.split((P, k.shape[2]), dim=-1)
    grouped = on_prefix.new_zeros(G, M, H, S, P)
    grouped[shared.row_group, shared.row_rank] = on_prefix
    y_prefix = grouped.transpose(1, 2).reshape(G, H, M * S, P) @ prefix_v  # (G, H, M * S, hd)
    return on_own @ v + to_rows(y_prefix), on_own if weights else None


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.register_module("qkv_proj", None)  # q, k and v in one Linear after `fuse_projections`

    def fuse_projections(self) -> None:
        """Replace q_proj, k_proj and v_proj by one Linear of their stacked weights, `qkv_proj`: one GEMM
        reads the three weights in one pass (`fuse_linears`)."""
        self.qkv_proj = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def project_qkv(self, x: Tensor) -> Tensor:
        # x: (B, S, D) -> (B, S, (H + 2 H_kv) * hd): queries, keys, values side by side
        if self.qkv_proj is not None:
            return self.qkv_proj(x)
        return torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor, mask: Tensor, cache: KVCache,
                rows: slice = slice(None), probe: LayerProbe | None = None,
                prefix: tuple[Tensor, Tensor, SharedPrefix] | None = None) -> Tensor:
        # x: (B, S, D) for cache rows `rows`; cos, sin: (S, head_dim) or (B, 1, S, head_dim); input_pos: (S,);
        # mask: (S, kv_len) or (B, 1, S, kv_len) bool (with `prefix`: its additive `own_key_bias`);
        # probe: records this layer's attention;
        # prefix: this layer's keys and values of a `SharedPrefix` (and it), attended before the cache
        B, S, _ = x.shape
        H, H_kv = self.n_heads, self.n_kv_heads
        heads = self.project_qkv(x).view(B, S, H + 2 * H_kv, self.head_dim).transpose(1, 2)  # (B, H + 2 H_kv, S, hd)
        rotated = apply_rope(heads[:, : H + H_kv], cos, sin)  # queries and keys in one pass
        q, k, v = rotated[:, :H], rotated[:, H:], heads[:, H + H_kv :]  # (B, H, S, hd), (B, H_kv, S, hd) x 2
        k_all, v_all = cache.update(input_pos, k, v, rows)  # (B, H_kv, max_seq_len, hd)
        kv_len = mask.shape[-1]
        # Attention runs in the cache's dtype: a float32 cache under bf16 weights is faster on CPU.
        if prefix is not None:
            y, weights = attend_with_prefix(q.to(k_all.dtype), k_all[:, :, :kv_len], v_all[:, :, :kv_len], mask,
                                            *prefix, weights=probe is not None)
            if probe is not None:
                probe.from_weights(weights)
        else:
            if probe is not None:
                probe.from_keys(q, k_all[:, :, :kv_len], mask)
            y = F.scaled_dot_product_attention(
                q.to(k_all.dtype), k_all[:, :, :kv_len], v_all[:, :, :kv_len], attn_mask=mask,
                enable_gqa=self.n_heads != self.n_kv_heads,
            )  # (B, H, S, hd)
        return self.o_proj(y.to(x.dtype).transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.register_module("gate_up_proj", None)  # gate and up in one Linear after `fuse_projections`

    def fuse_projections(self) -> None:
        """Replace gate_proj and up_proj by one Linear of their stacked weights, `gate_up_proj`."""
        self.gate_up_proj = fuse_linears(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, S, D) -> (B, S, D)
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, S, ffn_dim) each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor, mask: Tensor, cache: KVCache,
                rows: slice = slice(None), probe: LayerProbe | None = None,
                prefix: tuple[Tensor, Tensor, SharedPrefix] | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, mask, cache, rows, probe, prefix)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.kv_dtype: torch.dtype | None = None  # dtype of the caches new_cache makes; None: the weights'

    def fuse_projections(self) -> None:
        """Every layer's q/k/v and gate/up projections as one Linear each (`Attention.fuse_projections`,
        `FeedForward.fuse_projections`): a decode step makes 4 GEMM calls per layer instead of 7, and reads
        the same weights in fewer, longer passes (BENCHMARKS.md 37). Call it after loading the checkpoint,
        whose names are the separate layers'; each output is the separate layers' up to the GEMM's order of
        summation, so the exact preset keeps them separate."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def new_cache(self, batch: int, max_seq_len: int, dtype: torch.dtype | None = None) -> LlamaCache:
        """A cache of `batch` rows and `max_seq_len` slots on the weights' device (make it after moving the
        model), uninitialized: forwards must write slots before reading them (`KVCache`). dtype: the cache's
        (and attention's) dtype; default `kv_dtype`, else the weights'."""
        weight = self.norm.weight
        return LlamaCache(self.cfg, batch, max_seq_len, dtype or self.kv_dtype or weight.dtype, weight.device)

    def forward(self, x: Tensor, input_pos: Tensor, cache: LlamaCache, kv_len: int | None = None,
                seq_start: Tensor | None = None, rows: slice = slice(None),
                probe: AttentionProbe | None = None, visible_until: Tensor | None = None,
                shared: SharedPrefix | None = None) -> Tensor:
        """x: (B, S, D) input embeddings at cache slots input_pos (S,) -> final-norm hidden states (B, S, D).

        Writes the keys and values of x into `cache` (rows `rows`, slots input_pos); attention covers cache
        slots [0, kv_len) (default: the whole cache), causally masked by position.
        seq_start: (B,) first slot of each row's sequence when rows are left-padded; None: all rows start at 0.
        rows: the cache rows x belongs to (default: all), e.g. the prefill of sequences joining a batch.
        probe: collects the attention weights of a few heads at the last position (`AttentionProbe`); with
        `shared`, over the cache slots (normalised over the prefix too).
        visible_until: (S,) or per row (B, S), the last slot each new position attends to; default its own
        (causal). A block decoded in parallel (block diffusion) passes its last slot: its positions see each
        other, and the cache before them.
        shared: a prefix each row's sequence begins with, held outside the cache (`SharedPrefix`): attention
        covers it before the cache slots, and the rows' positions go on from its length.
        input_pos (B, S) instead: each row's own slots (its positions, every sequence starting at slot 0).
        """
        kv_len = kv_len or cache.max_seq_len
        if input_pos.dim() == 2:  # per-row positions: mask and RoPE gathered by position, on the device
            mask = (torch.arange(kv_len, device=x.device) <= input_pos[..., None])[:, None]  # (B, 1, S, kv_len)
            cos = cache.rope_cos[input_pos].to(x.dtype)[:, None]  # (B, 1, S, head_dim)
            sin = cache.rope_sin[input_pos].to(x.dtype)[:, None]
        else:
            pos, mask = positions_and_mask(input_pos, kv_len, seq_start, visible_until)
            if shared is not None:  # positions past the cache's tables
                cos, sin = rope_at(cache.inv_freq, pos + shared.row_offset[:, None])  # (B, S, head_dim)
                cos, sin = cos.to(x.dtype)[:, None], sin.to(x.dtype)[:, None]  # (B, 1, S, head_dim)
            else:
                cos, sin = cache.rope_cos[pos].to(x.dtype), cache.rope_sin[pos].to(x.dtype)  # (S | B, S, head_dim)
                if seq_start is not None:
                    cos, sin = cos[:, None], sin[:, None]  # (B, 1, S, head_dim)
        if shared is not None:
            mask = shared.own_key_bias(mask)  # the additive form attend_with_prefix takes, made once
        if probe is not None:
            probe.weights.clear()
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache.layers)):
            x = layer(x, cos, sin, input_pos, mask, layer_cache, rows, probe.at(i) if probe is not None else None,
                      (*shared.layers[i], shared) if shared is not None else None)
        return self.norm(x)


def fuse_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear computing the given ones' outputs side by side (their weights stacked by rows): the same
    input, in (dim,) -> (sum of their out_features,)."""
    first = linears[0]
    weight = torch.cat([linear.weight.detach() for linear in linears])  # (sum out, in)
    fused = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=first.bias is not None,
                                     device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([linear.bias.detach() for linear in linears]), requires_grad=False)
    return fused


def positions_and_mask(input_pos: Tensor, kv_len: int, seq_start: Tensor | None,
                       visible_until: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each query's position in its own sequence and the attention mask over cache slots [0, kv_len).

    input_pos: (S,) cache slots of the queries. seq_start None: every row starts at slot 0, positions (S,)
    and a causal mask (S, kv_len) ((B, 1, S, kv_len) with per-row `visible_until`). seq_start (B,): rows
    left-padded, each row's positions (B, S) counted from its own first slot and a mask (B, 1, S, kv_len)
    that also hides the slots before it. visible_until: (S,) or (B, S), the last slot each query sees
    (default: its own).
    """
    slots = torch.arange(kv_len, device=input_pos.device)  # (kv_len,)
    query = input_pos[:, None]  # (S, 1)
    until = query if visible_until is None else visible_until[..., None]  # (S, 1) or (B, S, 1)
    if seq_start is None:
        mask = slots <= until  # (S, kv_len) or (B, S, kv_len)
        return input_pos, mask[:, None] if mask.dim() == 3 else mask
    start = seq_start[:, None, None]  # (B, 1, 1)
    # A padding query sees only itself: a row with every key masked would turn into NaN.
    mask = (slots <= until) & ((slots >= start) | (slots == query))  # (B, S, kv_len)
    return (input_pos - seq_start[:, None]).clamp_min(0), mask[:, None]
