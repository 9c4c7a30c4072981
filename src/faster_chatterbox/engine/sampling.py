"""T3's logits processors as plain tensor ops, in upstream's order for each model.

CFG combine, then the processors in `SamplingParams.processors` order, then softmax -> multinomial:
  LLAMA_ORDER  repetition penalty -> temperature -> min_p -> top_p   (English, Multilingual: `T3.inference`)
  TURBO_ORDER  temperature -> top_k -> top_p -> repetition penalty   (Turbo, Nano: `T3.inference_turbo`)
Each step repeats the arithmetic of the matching Hugging Face processor, so equal logits give bit-identical
probabilities and, from the same RNG state, the same token. A processor that is the identity at its
setting (penalty 1, temperature 1, top_k 0, min_p 0, top_p 1) is skipped: it cannot change the probabilities.

Batches draw either with one `torch.multinomial` per row on the row's generator (`sample_rows`: upstream's
draws, the exact path's parity) or all rows at once with `keyed_sample_rows`, the exponential race
(Gumbel-max) on counter-based noise hashed from each row's seed and draw index: no generator, no launch
per row, no host sync, fixed shapes (capturable), and a row's draws do not depend on its batch mates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import numbers

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


# Valid ranges of the sampling parameters: name -> (low, high, low excluded).
SAMPLING_RANGES = {
    # Lower bounds where the arithmetic stays finite: a temperature or penalty near 0 (5e-324, say) makes the
    # scaled logits inf and the probabilities NaN, which would fail every request of a shared batch. At 0.01
    # sampling is already greedy in effect.
    "temperature": (0.01, math.inf, False),
    "cfg_weight": (0.0, math.inf, False),
    "repetition_penalty": (0.1, math.inf, False),
    "min_p": (0.0, 1.0, False),
    "top_p": (0.0, 1.0, False),  # 0 keeps the most probable token alone, as Hugging Face's TopPLogitsWarper
}
TOP_K_MAX = 1_000_000  # top_k is an integer in [0, TOP_K_MAX]; 0 (or any k >= the vocabulary) keeps every token

PROCESSORS = ("repetition_penalty", "temperature", "top_k", "min_p", "top_p")
LLAMA_ORDER = ("repetition_penalty", "temperature", "min_p", "top_p")
TURBO_ORDER = ("temperature", "top_k", "top_p", "repetition_penalty")


def check_range(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """Raise a ValueError naming `name` unless `value` is a finite real number (numpy's too) in the range."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value <= high
          and (value > low if low_open else value >= low))
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


@dataclass
class SamplingParams:
    temperature: float = 0.8
    cfg_weight: float = 0.5
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    processors: tuple[str, ...] = LLAMA_ORDER  # the order the processors run in (a model's, see above)


def cfg_combine(logits: Tensor, cfg_weight: float) -> Tensor:
    """(2, V) conditional and unconditional rows -> (1, V) guided logits."""
    cond, uncond = logits[0:1], logits[1:2]
    return cond + torch.as_tensor(cfg_weight, device=cond.device, dtype=cond.dtype) * (cond - uncond)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Push down every token already generated (`seen`, a (B, V) bool mask): x/penalty if x >= 0 else x*penalty."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens less probable than min_p times the most probable one."""
    probs = torch.softmax(logits, dim=-1)
    # Hugging Face also re-admits the top-1 token (min_tokens_to_keep=1); it can never fall below the bar.
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -float("inf"))


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep the top_k most probable tokens (ties with the k-th kept), as Hugging Face's TopKLogitsWarper."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    return logits.masked_fill(logits < kth, -float("inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering: drop the least probable tokens whose total mass is at most 1 - top_p (keeps the top-1)."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum_probs <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, -float("inf"))


def next_token_probs(logits: Tensor, seen: Tensor, p: SamplingParams,
                     guide: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """logits: (2, V) CFG pair or (1, V) when cfg_weight == 0; seen: (1, V) bool -> probabilities (1, V).
    guide: applied to the guided logits before the other processors (the multilingual alignment guard)."""
    if logits.shape[0] == 2:
        logits = cfg_combine(logits, p.cfg_weight)
    if guide is not None:
        logits = guide(logits)
    steps = {
        "repetition_penalty": (p.repetition_penalty != 1.0, lambda x: repetition_penalty(x, seen, p.repetition_penalty)),
        "temperature": (p.temperature != 1.0, lambda x: x / p.temperature),
        "top_k": (p.top_k > 0, lambda x: top_k_filter(x, p.top_k)),
        "min_p": (p.min_p > 0.0, lambda x: min_p_filter(x, p.min_p)),
        "top_p": (p.top_p < 1.0, lambda x: top_p_filter(x, p.top_p)),
    }
    for name in p.processors:
        active, apply = steps[name]
        if active:
            logits = apply(logits)
    return torch.softmax(logits, dim=-1)


def sample(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row from `generator`, by default the global RNG as upstream does: (B, V) -> (B, 1)."""
    return torch.multinomial(probs, num_samples=1, generator=generator)


# --- batches of independent sequences ----------------------------------------------------------------
# Every processor runs on every row. At its identity setting (weight 0 against the row itself, penalty 1,
# temperature 1, min_p 0, top_p 1) it leaves the row's probabilities bit for bit unchanged (top_p 1 only
# turns logits of probability 0 into -inf; top_k 0 keeps the whole vocabulary), so each row gets what
# `next_token_probs` gives it alone. The rows of a batch share one processor order (they share a model).


@dataclass
class RowSamplingParams:
    """Per-row sampling parameters of a batch, each (N, 1) float32."""

    temperature: Tensor
    cfg_weight: Tensor
    repetition_penalty: Tensor
    min_p: Tensor
    # 1 - top_p taken in float64, then rounded to float32: the threshold top_p_filter's comparison uses
    # (1 - top_p in float32 can differ in the last bit)
    top_p_drop: Tensor
    use_top_p: bool  # False when every row has top_p == 1: the sort is skipped, as next_token_probs skips it
    top_k: Tensor  # (N, 1) long, 0: off
    use_top_k: bool  # False when no row sets top_k: the sort is skipped
    processors: tuple[str, ...] = LLAMA_ORDER

    @classmethod
    def stack(cls, params: list[SamplingParams], device: torch.device | None = None) -> RowSamplingParams:
        def column(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        orders = {p.processors for p in params}
        if len(orders) > 1:
            raise ValueError(f"the rows of a batch share one processor order, got {sorted(orders)}")
        top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=device)[:, None]
        return cls(column([p.temperature for p in params]), column([p.cfg_weight for p in params]),
                   column([p.repetition_penalty for p in params]), column([p.min_p for p in params]),
                   column([1 - p.top_p for p in params]), any(p.top_p < 1.0 for p in params), top_k,
                   any(p.top_k > 0 for p in params), orders.pop() if orders else LLAMA_ORDER)

    def cat(self, other: RowSamplingParams) -> RowSamplingParams:
        """These rows, then `other`'s (an empty side takes the other's processor order)."""
        if not len(self.temperature):
            return other
        if len(other.temperature) and other.processors != self.processors:
            raise ValueError(f"the rows of a batch share one processor order: {self.processors} != {other.processors}")
        values = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, use_top_p=self.use_top_p or other.use_top_p, use_top_k=self.use_top_k or other.use_top_k,
                       **{name: torch.cat((v, getattr(other, name))) for name, v in values.items()})

    def select(self, rows: Tensor) -> RowSamplingParams:
        """The parameters of rows `rows` (K,), in that order."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: v[rows] for name, v in values.items() if isinstance(v, Tensor)})


def cfg_combine_rows(cond: Tensor, uncond: Tensor, weight: Tensor) -> Tensor:
    """(N, V) conditional and unconditional logits, weights (N, 1) -> (N, V) guided logits, as cfg_combine."""
    return cond + weight * (cond - uncond)


def top_p_filter_rows(logits: Tensor, drop_mass: Tensor) -> Tensor:
    """top_p_filter with per-row thresholds drop_mass = 1 - top_p (N, 1), see RowSamplingParams.top_p_drop."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum_probs <= drop_mass
    drop_sorted[..., -1:] = False
    return logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -float("inf"))


def next_token_probs_rows(cond: Tensor, uncond: Tensor, seen: Tensor, p: RowSamplingParams,
                          guide: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Row-wise next_token_probs. cond, uncond: (N, V) logits (uncond = cond for a row without guidance);
    seen: (N, V) bool -> probabilities (N, V)."""
    logits = cfg_combine_rows(cond, uncond, p.cfg_weight)
    if guide is not None:
        logits = guide(logits)
    steps = {
        "repetition_penalty": lambda x: repetition_penalty(x, seen, p.repetition_penalty),
        "temperature": lambda x: x / p.temperature,
        "top_k": lambda x: top_k_filter_rows(x, p.top_k) if p.use_top_k else x,
        "min_p": lambda x: min_p_filter(x, p.min_p),
        "top_p": lambda x: top_p_filter_rows(x, p.top_p_drop) if p.use_top_p else x,
    }
    for name in p.processors:
        logits = steps[name](logits)
    return torch.softmax(logits, dim=-1)


def top_k_filter_rows(logits: Tensor, top_k: Tensor) -> Tensor:
    """top_k_filter with per-row k (N, 1) long, 0 (off) or >= V keeping every token."""
    vocab = logits.shape[-1]
    k = torch.where((top_k == 0) | (top_k > vocab), vocab, top_k)
    kth = torch.sort(logits, dim=-1, descending=True)[0].gather(1, k - 1)  # (N, 1) each row's k-th value
    return logits.masked_fill(logits < kth, -float("inf"))


def sample_rows(probs: Tensor, generators: list[torch.Generator]) -> Tensor:
    """One draw per row, row i from generators[i], each as `sample` draws it alone: (N, V) -> (N, 1)."""
    return torch.cat([sample(probs[i : i + 1], g) for i, g in enumerate(generators)])


# --- keyed draws: counter-based noise, one launch for the batch ----------------------------------------
# The hash runs on int64 tensors holding 32-bit values; every product stays below 2**63 (a 32-bit factor
# times 16 bits), so nothing overflows on any backend and eager, compiled and captured steps hash alike.
SAMPLERS = ("multinomial", "keyed")
_MASK32 = 0xFFFFFFFF
_UNIFORM_BITS = 23  # (k + 0.5) / 2**23 is exact in float32 (24-bit significand): uniforms never 0 or 1


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for 32-bit x and constant c, computed from c's 16-bit halves."""
    return ((((x * (c >> 16)) & 0xFFFF) << 16) + x * (c & 0xFFFF)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """Chris Wellons' lowbias32 integer hash, a bijection of 32-bit values (int64 tensor in, int64 out)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(seeds: Tensor, counters: Tensor, n: int) -> Tensor:
    """Uniform noise in (0, 1), (N, n) float32: row i is a function of (seeds[i], counters[i]) alone.

    seeds: (N,) int64 in [0, 2**63) (a request's stream); counters: (N,) int64 >= 0 (its draw index)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = hash32(hi ^ hash32(lo ^ hash32(counters & _MASK32)))[:, None]  # (N, 1)
    key2 = hash32(key ^ 0x9E3779B9)
    index = torch.arange(n, device=seeds.device, dtype=torch.int64)  # (n,)
    bits = hash32(hash32(index ^ key) ^ key2) >> (32 - _UNIFORM_BITS)  # (N, n)
    return (bits.to(torch.float32) + 0.5) * (2.0 ** -_UNIFORM_BITS)


def keyed_sample_rows(probs: Tensor, seeds: Tensor, counters: Tensor) -> Tensor:
    """One draw per row of `probs` (N, V) by the exponential race: argmax(p / E) with E ~ Exp(1) keyed by
    (seeds[i], counters[i]) is token v with probability p_v (Gumbel-max). -> (N, 1) int64."""
    race = -torch.log(keyed_uniform(seeds, counters, probs.shape[-1]))  # (N, V) Exp(1)
    return torch.argmax(probs / race, dim=-1, keepdim=True)
