"""Block-diffusion decoding of T3 (Chatterbox-Flash): speech tokens a block (16) at a time, each block filled
in a few parallel denoising steps, for any number of independent sequences in one backbone batch.

The sequence, as chatterbox-flash 0.1.0 lays it out (models/t3.py's layout with BOS fed once):

    cond | text + learned text positions | BOS @ speech pos 0 | block 0 @ speech pos 0..15 | block 1 @ 0..15 | ...

(every block restarts the learned speech positions at 0; RoPE counts on). Under CFG a request has a second,
null row: conditioning and text, positions included, all zeros, BOS kept, and the same block tokens.

One block, at most K (`num_steps`) steps, the reference's `pmi_count_early` rule:
  1. The block, [MASK] where still undecided, runs over the cache: its positions attend to one another and
     to everything committed before them. Position i's logits come from the hidden state before it (the
     previous block's last position, or BOS).
  2. Every position draws a token from the guided distribution log p_c + w (log p_c - log p_u) at
     `temperature` (argmax at 0) and is scored by prior-calibrated PMI, log p(x) - log prior(x), guided as
     (1 + w) pmi_c - w pmi_u. With position_temperature > 0 the masked positions' scores get standard Gumbel
     noise (the reference adds Gumbel(0/T) = Gumbel(0): T's size does not matter, only T > 0).
  3. The n best-scored masked positions take their draw: n = max(OmniVoice's time-shifted count schedule
     (`unmask_counts`), positions scoring at least the q_k quantile of the masked scores), at most all,
     q_k = max(0, 1 - tau (k + 1) / K) (tau = time_shift_tau; 0 turns early decoding off). The last step
     takes every remaining position.
  The block ends when no position is masked or it holds the stop token. Run once more as decided, its keys
  and values become the cache the next block attends to ("commit").
PMI's prior: the mean over positions of the speech distribution after [BOS, MASK x block] with no
conditioning at all (`uncond_block_prior`, computed once per model), or, uncond_prior=False, the block's own
mean over positions (without CFG the first step's of the first block, frozen; with CFG each step's).

Batching: the requests' blocks run in lockstep on a `BlockDecoder` (the autoregressive batch's cache
management: left-padded prefixes, requests joining between blocks, finished ones leaving). Each request has
its own parameters and random stream, its torch.Generator or, None, the global RNG, drawn in the
reference's order (per step the tokens, then the position noise), so its tokens do not depend on its batch
mates. Per step the Python work is one draw per request; scoring and selection are tensor ops over the batch,
and one host sync tells which blocks are done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.t3 import T3, T3Cond
from .batch_decode import BatchDecoder, decode_all, input_problem, validate_requests
from .sampling import check_range

MAX_STEPS = 64  # denoising steps per block at most
_LOG_EPS = 1e-8  # the reference's floor under PMI's logarithms


@dataclass(frozen=True)
class FlashParams:
    """One request's decoding parameters; the defaults are the reference's (its paper's best)."""

    num_steps: int = 10  # K, denoising steps per block at most
    temperature: float = 0.6  # of the token draws; 0: argmax
    time_shift_tau: float = 0.1  # early decoding: q_k = max(0, 1 - tau (k+1)/K); 0: the count schedule alone
    schedule_shift: float = 0.5  # OmniVoice's r_n shift of the count schedule (omnivoice_schedule_t_shift)
    cfg_scale: float = 1.0  # classifier-free guidance weight; 0: no null row
    position_temperature: float = 5.0  # > 0: Gumbel noise on the masked positions' scores
    uncond_prior: bool = True  # PMI against the unconditional block prior (pmi_uncond_prior_precompute)


# name -> (low, high); all inclusive
FLASH_RANGES = {"temperature": (0.0, 100.0), "time_shift_tau": (0.0, 100.0), "schedule_shift": (0.0, 100.0),
                "cfg_scale": (0.0, 100.0), "position_temperature": (0.0, 100.0)}


def params_problem(p: FlashParams) -> str | None:
    if not isinstance(p, FlashParams):
        return f"params must be FlashParams, got {type(p).__name__}"
    if isinstance(p.num_steps, bool) or not isinstance(p.num_steps, int) or not 1 <= p.num_steps <= MAX_STEPS:
        return f"num_steps must be an integer in [1, {MAX_STEPS}], got {p.num_steps!r}"
    if not isinstance(p.uncond_prior, bool):
        return f"uncond_prior must be a bool, got {p.uncond_prior!r}"
    for name, (low, high) in FLASH_RANGES.items():
        try:
            check_range(name, getattr(p, name), low, high)
        except ValueError as exc:
            return str(exc)
    return None


@dataclass
class FlashRequest:
    cond: T3Cond  # one voice
    text_tokens: Tensor  # (L,) wrapped in start/stop text tokens
    params: FlashParams = field(default_factory=FlashParams)
    max_new_tokens: int = 1000  # speech tokens at most (the last block is cut to fit)
    generator: torch.Generator | None = None  # the request's random stream; None: the global RNG

    @property
    def rows(self) -> int:
        """Backbone rows: conditional and null, or the conditional row alone when cfg_scale == 0."""
        return 2 if self.params.cfg_scale > 0 else 1


def request_problem(t3: T3, r: FlashRequest) -> str | None:
    if not t3.cfg.mask_token:
        return "this T3 has no [MASK] embedding: block diffusion needs a Chatterbox-Flash checkpoint"
    if not isinstance(r, FlashRequest):
        return f"expected a FlashRequest, got {type(r).__name__}"
    return params_problem(r.params) or input_problem(t3, r)


def unmask_counts(n: int, steps: int, shift: float) -> list[int]:
    """How many of a block's n masked positions each of `steps` steps decides at least (n in all): OmniVoice's
    schedule, the fraction decided after step s being r(s/K) = shift x / (1 + (shift - 1) x), cumulatively
    rounded; the last step takes the rest. shift 0: an even split, the last step taking the remainder."""
    if steps == 1:
        return [n]
    if shift <= 0:
        return [n // steps] * (steps - 1) + [n - (n // steps) * (steps - 1)]
    counts, done = [], 0
    for s in range(1, steps):
        x = s / steps
        target = int(round(n * (shift * x / (1.0 + (shift - 1.0) * x))))
        counts.append(min(max(0, target - done), n - done))
        done += counts[-1]
    return counts + [n - done]


def flash_prefix(t3: T3, cond: T3Cond, text_tokens: Tensor, *, cfg: bool) -> Tensor:
    """A request's prefix rows (1 + cfg, len_cond + L + 1, D): [cond | text + positions | BOS at speech
    position 0], and under CFG the null row, zeros but for BOS."""
    device = t3.speech_emb.weight.device
    bos = t3.speech_embeds(torch.full((1, 1), t3.cfg.start_speech_token, dtype=torch.long, device=device),
                           torch.zeros(1, dtype=torch.long, device=device))  # (1, 1, D)
    text_tokens = text_tokens.to(device)
    text = t3.text_emb(text_tokens) + t3.text_pos_emb(torch.arange(len(text_tokens), device=device))  # (L, D)
    cond_emb = t3.cond_embeds(cond)  # (1, len_cond, D)
    row = torch.cat((cond_emb, text[None], bos), dim=1)
    if not cfg:
        return row
    null = torch.cat((torch.zeros_like(row[:, :-1]), bos), dim=1)
    return torch.cat((row, null))


@torch.inference_mode()
def uncond_block_prior(t3: T3, block_size: int = 16) -> Tensor:
    """PMI's prior (V,) float32: the speech distribution after [BOS, MASK x block_size], no conditioning,
    averaged over the block's positions (causal attention, as the reference's plain forward)."""
    device = t3.speech_emb.weight.device
    tokens = torch.full((1, block_size + 1), t3.cfg.mask_token_id, dtype=torch.long, device=device)
    tokens[0, 0] = t3.cfg.start_speech_token
    positions = torch.arange(block_size + 1, device=device)
    h = t3.tfmr(t3.speech_embeds(tokens, positions), positions, t3.tfmr.new_cache(1, block_size + 1))
    return F.softmax(t3.speech_head(h[:, :block_size]).float(), dim=-1).mean(dim=1)[0]


class BlockDecoder(BatchDecoder):
    """`BatchDecoder` for blocks: Flash's prefixes, slots for whole blocks, `block` runs each live request's
    block at the next slots (rewritten at every step) and `commit` moves past it."""

    def __init__(self, t3: T3, block_size: int):
        self.block_size = block_size
        super().__init__(t3)
        self._positions = torch.arange(block_size, device=self.device)  # speech positions of a block

    def _prefixes(self, requests: list[FlashRequest]) -> list[Tensor]:
        return [flash_prefix(self.t3, r.cond, r.text_tokens, cfg=r.rows == 2) for r in requests]

    def _slots(self, request: FlashRequest) -> int:
        return -(-request.max_new_tokens // self.block_size) * self.block_size

    def _out(self, h: Tensor) -> Tensor:
        return h  # the hidden state before block 0's first position

    def block(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Hidden states (B, block, D) of each live request's block tokens (N, block), its first lengths (N,)
        positions seeing one another (a shorter last block: the rest are not part of it)."""
        x = self.t3.speech_embeds(tokens, self._positions)[self.row_request]  # (B, block, D)
        slot = self.next_slot
        until = (slot - 1 + lengths)[self.row_request, None].expand(-1, self.block_size)  # (B, block)
        return self.t3.tfmr(x, torch.arange(slot, slot + self.block_size, device=self.device), self.cache,
                            kv_len=slot + self.block_size, seq_start=self.seq_start, visible_until=until)

    def commit(self) -> None:
        self.next_slot += self.block_size


@dataclass
class _Live:
    key: object  # the caller's handle
    request: FlashRequest
    tokens: list[int] = field(default_factory=list)  # decided so far (cut after a stop token)
    done: bool = False


class FlashBatch:
    """Requests decoding blocks together: they join with `admit` (between blocks) and `advance` decodes one
    block for all of them, reporting the new tokens and dropping finished requests (DecodeBatch's interface,
    so T3Scheduler batches them across calls)."""

    def __init__(self, t3: T3, prior: Tensor, block_size: int = 16):
        if not isinstance(block_size, int) or not 1 <= block_size <= 64:
            raise ValueError(f"block_size must be an integer in [1, 64], got {block_size!r}")
        self.t3, self.prior, self.block_size = t3, prior, block_size
        self.decoder = BlockDecoder(t3, block_size)
        self.live: list[_Live] = []
        device, vocab = self.decoder.device, t3.cfg.speech_tokens_dict_size
        self._ctx = torch.zeros(0, t3.cfg.llama.dim, device=device)  # (B, D) hidden state before each block
        self._fixed = torch.zeros(0, vocab, device=device)  # (N, V) PMI prior of requests with a fixed one
        self._unfrozen = torch.zeros(0, dtype=torch.bool, device=device)  # (N,) block prior still to freeze
        self._generators: list[torch.Generator | None] = []

    @property
    def empty(self) -> bool:
        return not self.live

    def admit(self, keys: list, requests: list[FlashRequest]) -> None:
        """Join `requests` (validated) under the handles `keys`, before the next block. If it raises, the
        batch is as it was and its live requests go on."""
        h_cond, h_null = self.decoder.admit(requests)  # (n, D) each
        ctx = torch.cat([torch.stack((c, u))[: r.rows] for c, u, r in zip(h_cond, h_null, requests)])
        n, vocab = len(requests), self.prior.shape[0]
        running = torch.tensor([not r.params.uncond_prior and r.rows == 1 for r in requests], device=ctx.device)
        self._ctx = torch.cat((self._ctx, ctx.float()))
        self._fixed = torch.cat((self._fixed, self.prior.to(ctx.device).expand(n, vocab)))
        self._unfrozen = torch.cat((self._unfrozen, running))
        self._generators += [r.generator for r in requests]
        self.live += [_Live(key, r) for key, r in zip(keys, requests)]

    def advance(self) -> list[tuple[object, list[int], bool]]:
        """Decode one block; (key, tokens so far, finished) for every live request. The token lists are the
        batch's own: read them, do not modify them."""
        if not self.live:
            return []
        t3, bs, device = self.t3, self.block_size, self.decoder.device
        mask_id, stop = t3.cfg.mask_token_id, t3.cfg.stop_speech_token
        params = [live.request.params for live in self.live]
        lengths_list = [min(bs, live.request.max_new_tokens - len(live.tokens)) for live in self.live]
        lengths = torch.tensor(lengths_list, device=device)
        steps = max(p.num_steps for p in params)
        counts = torch.tensor([unmask_counts(n, p.num_steps, p.schedule_shift) + [0] * (steps - p.num_steps)
                               for n, p in zip(lengths_list, params)], device=device)  # (N, steps)
        xt = torch.full((len(self.live), bs), mask_id, dtype=torch.long, device=device)
        present = torch.arange(bs, device=device) < lengths[:, None]  # (N, bs)
        active = [True] * len(self.live)
        for k in range(steps):
            h = self.decoder.block(xt, lengths)  # (B, bs, D)
            logits = t3.speech_head(torch.cat((self._ctx[:, None].to(h.dtype), h[:, :-1]), dim=1)).float()
            xt = self._step(xt, logits, k, counts[:, k], params, lengths_list, present, active)
            done = ((xt == mask_id) & present).sum(1).eq(0) | ((xt == stop) & present).any(1)
            active = [a and not d for a, d in zip(active, done.tolist())]
            if not any(active):
                break
        return self._finish_block(xt.tolist(), lengths_list)

    def _step(self, xt: Tensor, logits: Tensor, k: int, counts: Tensor, params: list[FlashParams],
              lengths: list[int], present: Tensor, active: list[bool]) -> Tensor:
        """One denoising step k: the block tokens (N, bs) after deciding this step's positions (at least
        `counts` (N,) of them, the schedule's)."""
        dec, device = self.decoder, xt.device
        cond, null = logits[dec.cond_rows], logits[dec.uncond_rows]  # (N, bs, V); a row without CFG: twice
        column = lambda values: torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]  # noqa: E731
        w = column([p.cfg_scale for p in params])
        guided = torch.where(w > 0, _cfg_logits(cond, null, w), cond)
        temperature = column([p.temperature if p.temperature > 0 else 1.0 for p in params])
        probs = F.softmax(guided / temperature, dim=-1)
        sampled = torch.zeros_like(xt)
        noise = torch.zeros(xt.shape, device=device)
        for j, (p, n, g) in enumerate(zip(params, lengths, self._generators)):
            if not active[j]:
                continue
            if p.temperature > 0:
                sampled[j, :n] = torch.multinomial(probs[j, :n], 1, generator=g)[:, 0]
            else:
                sampled[j, :n] = guided[j, :n].argmax(dim=-1)
            if p.position_temperature > 0:
                u = torch.rand(n, generator=g, device=device)
                noise[j, :n] = -torch.log(-torch.log(u + 1e-10) + 1e-10)
        probs_c, probs_u = F.softmax(cond, dim=-1), F.softmax(null, dim=-1)
        prior_c, prior_u = self._priors(probs_c, probs_u, present, w[:, 0, 0] > 0)
        one_plus_w = column([1.0 + p.cfg_scale for p in params])[..., 0]
        pmi = one_plus_w * _pmi(probs_c, sampled, prior_c) - w[..., 0] * _pmi(probs_u, sampled, prior_u)
        is_mask = (xt == self.t3.cfg.mask_token_id) & present
        noisy = torch.tensor([p.position_temperature > 0 for p in params], device=device)[:, None]
        pmi = torch.where(is_mask & noisy, pmi + noise, pmi)
        n_unmask = self._unmask_count(pmi, is_mask, k, counts, params)
        order = torch.where(is_mask, pmi, -math.inf).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(xt.shape[1], device=device).expand_as(order))
        take = is_mask & (rank < n_unmask[:, None]) & torch.tensor(active, device=device)[:, None]
        return torch.where(take, sampled, xt)

    def _priors(self, probs_c: Tensor, probs_u: Tensor, present: Tensor, cfg: Tensor) -> tuple[Tensor, Tensor]:
        """PMI's denominators (N, V) for the conditional and null scores: the fixed prior, or the block's mean
        over its positions (CFG without the unconditional prior: every step; without CFG: frozen at the first)."""
        weights = present.float()[..., None] / present.sum(1)[:, None, None]
        mean_c, mean_u = (probs_c * weights).sum(1), (probs_u * weights).sum(1)  # (N, V)
        uncond = torch.tensor([live.request.params.uncond_prior for live in self.live], device=cfg.device)
        self._fixed = torch.where(self._unfrozen[:, None], mean_c, self._fixed)
        self._unfrozen = torch.zeros_like(self._unfrozen)
        per_step = (cfg & ~uncond)[:, None]
        return torch.where(per_step, mean_c, self._fixed), torch.where(per_step, mean_u, self._fixed)

    def _unmask_count(self, pmi: Tensor, is_mask: Tensor, k: int, counts: Tensor,
                      params: list[FlashParams]) -> Tensor:
        """Positions each block decides at step k (N,): max(count schedule, those scoring at least the q_k
        quantile of the masked scores, linearly interpolated as torch.quantile), all on the last step."""
        device = pmi.device
        masked = is_mask.sum(1)  # (N,)
        q = torch.tensor([max(0.0, 1.0 - p.time_shift_tau * (k + 1) / p.num_steps) for p in params],
                         dtype=torch.float32, device=device)
        ascending = torch.where(is_mask, pmi, math.inf).sort(dim=1).values  # the masked scores first
        rank = q * (masked - 1).clamp_min(0).float()
        low, high = rank.floor().long()[:, None], rank.ceil().long()[:, None]
        threshold = torch.lerp(ascending.gather(1, low), ascending.gather(1, high), (rank[:, None] - low.float()))
        quantile = ((pmi >= threshold) & is_mask).sum(1)
        early = torch.tensor([p.time_shift_tau > 0 for p in params], device=device)
        n = torch.minimum(torch.maximum(counts, torch.where(early, quantile, 0)), masked)
        last = torch.tensor([k >= p.num_steps - 1 for p in params], device=device)
        return torch.where(last, masked, n)

    def _finish_block(self, xt: list[list[int]], lengths: list[int]) -> list[tuple[object, list[int], bool]]:
        """Append each request's block (cut after its first stop token), report, drop the finished requests
        and commit the others' blocks to the cache."""
        stop, reports, keep = self.t3.cfg.stop_speech_token, [], []
        for p, (live, block, n) in enumerate(zip(self.live, xt, lengths)):
            block = block[:n]
            if stop in block:
                block, live.done = block[: block.index(stop) + 1], True
            live.tokens += block
            live.done = live.done or len(live.tokens) >= live.request.max_new_tokens
            reports.append((live.key, live.tokens, live.done))
            if not live.done:
                keep.append(p)
        kept = [xt[p] for p in keep]
        self._keep(keep)
        if self.live:
            block = torch.tensor(kept, dtype=torch.long, device=self.decoder.device)
            full = torch.full((len(kept),), self.block_size, device=self.decoder.device)
            self._ctx = self.decoder.block(block, full)[:, -1].float()
            self.decoder.commit()
        return reports

    def remove(self, keys: set) -> None:
        """Drop the requests with these handles (cancelled)."""
        self._keep([p for p, live in enumerate(self.live) if live.key not in keys])

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.live):
            return
        rows = self.decoder.keep(keep)
        index = torch.tensor(keep, dtype=torch.long, device=self.decoder.device)
        self._ctx = self._ctx[rows]
        self._fixed, self._unfrozen = self._fixed[index], self._unfrozen[index]
        self._generators = [self._generators[p] for p in keep]
        self.live = [self.live[p] for p in keep]


def _cfg_logits(cond: Tensor, null: Tensor, w: Tensor) -> Tensor:
    """The guided logits: log p_c + w (log p_c - log p_u)."""
    c, u = F.log_softmax(cond, dim=-1), F.log_softmax(null, dim=-1)
    return c + w * (c - u)


def _pmi(probs: Tensor, sampled: Tensor, prior: Tensor) -> Tensor:
    """log p_i(x_i) - log prior(x_i) (N, bs): probs (N, bs, V), sampled (N, bs), prior (N, V)."""
    p = probs.gather(2, sampled[..., None])[..., 0]
    return torch.log(p.clamp_min(_LOG_EPS)) - torch.log(prior.gather(1, sampled).clamp_min(_LOG_EPS))


@torch.inference_mode()
def generate_block_diffusion(t3: T3, requests: list[FlashRequest], *, block_size: int = 16,
                             prior: Tensor | None = None,
                             on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Tensor]:
    """Speech tokens for every request in one batch, each (N_j,) with the stop token when it was drawn (and
    [MASK] ids before it that the reference leaves undecided: ids >= 6561 go before S3Gen).

    prior: `uncond_block_prior(t3, block_size)`, computed here if None. on_tokens(j, tokens so far) after
    every block (the list must not be modified)."""
    validate_requests(t3, requests, request_problem, "FlashRequest")
    prior = uncond_block_prior(t3, block_size) if prior is None else prior
    return decode_all(FlashBatch(t3, prior, block_size), requests, on_tokens)
