"""Batched T3 decoding: many independent sequences (texts, voices, sampling settings) in one backbone batch.

Each request brings its CFG pair (conditional and unconditional row) or one row when cfg_weight == 0, laid
out as `generate_speech_tokens` lays out one sequence (see there and models/t3.py: BOS fed twice, token i at
speech position i + 1, the repetition penalty counting BOS). Prefixes of different lengths are left-padded
to a common length, so all rows write the same cache slot and sit at the same speech position at every
step; the backbone gets each row's first slot (`seq_start`), counts the row's RoPE positions from it and
masks the padding out.

Sampling runs per row with the request's own parameters and its own generator, so a request's tokens do
not depend on what else is in the batch: they are the tokens `generate_speech_tokens` samples for it alone
from the same generator (the batched matmuls round differently, ~5e-7 relative in the logits, which in
practice never changes a draw). A request is finished by the stop token or by its own max_new_tokens;
every `check_every` steps (one host sync) finished requests are dropped from the batch and the KV cache.
Rows that finished since the last check run on until it, and what they sample is discarded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.t3 import T3, T3Cond
from .sampling import (SAMPLING_RANGES, RowSamplingParams, SamplingParams, check_range, next_token_probs_rows,
                       sample_rows)


@dataclass
class DecodeRequest:
    cond: T3Cond  # one voice
    text_tokens: Tensor  # (L,) wrapped in start/stop text tokens
    temperature: float = 0.8
    cfg_weight: float = 0.5
    repetition_penalty: float = 1.2
    min_p: float = 0.05
    top_p: float = 1.0
    max_new_tokens: int = 1000
    # The request's own random stream; None: a generator seeded from the global RNG (one draw per such
    # request, in request order), so seeding the global RNG still makes the batch reproducible.
    generator: torch.Generator | None = None

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.cfg_weight, self.repetition_penalty, self.min_p, self.top_p)

    @property
    def rows(self) -> int:
        """Backbone rows: the CFG pair, or the conditional row alone when cfg_weight == 0."""
        return 2 if self.cfg_weight > 0 else 1


class BatchDecoder:
    """The backbone side of a batch decode: left-padded prefill, one step per token, dropping requests.

    Works on the live requests, in order; `prefill` and `step` return each live request's conditional and
    unconditional speech logits, (N, V) each (the conditional ones twice for a request without CFG).
    """

    def __init__(self, t3: T3, requests: list[DecodeRequest], max_steps: int):
        self.t3 = t3
        device = t3.speech_emb.weight.device
        bos = torch.full((1, 1), t3.cfg.start_speech_token, dtype=torch.long, device=device)
        self.speech_pos = torch.arange(max_steps, device=device)  # token i is fed at speech position i + 1
        bos_emb = t3.speech_embeds(bos, self.speech_pos[:1])  # (1, 1, D)
        prefixes = []
        for r in requests:
            prefix = t3.prefix_embeds(r.cond, r.text_tokens, cfg=r.rows == 2)  # (R, P_j - 1, D)
            prefixes.append(torch.cat((prefix, bos_emb.expand(r.rows, -1, -1)), dim=1))  # (R, P_j, D)
        self.prefill_len = max(p.shape[1] for p in prefixes)
        self._prefill_x = torch.cat([F.pad(p, (0, 0, self.prefill_len - p.shape[1], 0)) for p in prefixes])
        self.seq_start = torch.tensor([self.prefill_len - p.shape[1] for p in prefixes for _ in range(p.shape[0])],
                                      device=device)  # (B,)
        self.cache_pos = torch.arange(self.prefill_len + max_steps, device=device)
        self.steps = 0  # tokens fed after the prefix
        first = [sum(r.rows for r in requests[:j]) for j in range(len(requests))]
        self._set_rows([list(range(f, f + r.rows)) for f, r in zip(first, requests)])
        t3.tfmr.setup_caches(len(self.seq_start), self.prefill_len + max_steps)

    def _set_rows(self, rows: list[list[int]]) -> None:
        """rows[j]: the backbone rows of live request j, its conditional row first."""
        self._rows = rows
        device = self.seq_start.device
        self.cond_rows = torch.tensor([r[0] for r in rows], device=device)  # (N,)
        self.uncond_rows = torch.tensor([r[-1] for r in rows], device=device)  # (N,)
        request = [0] * sum(len(r) for r in rows)
        for j, request_rows in enumerate(rows):
            for row in request_rows:
                request[row] = j
        self.row_request = torch.tensor(request, device=device)  # (B,) live request of each row

    def _logits(self, h: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.t3.speech_head(h).float()  # (B, V)
        return logits[self.cond_rows], logits[self.uncond_rows]

    def prefill(self) -> tuple[Tensor, Tensor]:
        """Run the prefixes (the second BOS last); logits for token 0."""
        x, self._prefill_x = self._prefill_x, None
        pos = self.cache_pos[: self.prefill_len]
        h = self.t3.tfmr(x, pos, kv_len=self.prefill_len, seq_start=self.seq_start)[:, -1]  # (B, D)
        return self._logits(h)

    def step(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Feed token i (N, 1) of every live request; logits for token i + 1."""
        i = self.steps
        x = self.t3.speech_embeds(tokens, self.speech_pos[i + 1 : i + 2])[self.row_request]  # (B, 1, D)
        slot = self.prefill_len + i
        h = self.t3.tfmr(x, self.cache_pos[slot : slot + 1], kv_len=slot + 1, seq_start=self.seq_start)[:, -1]
        self.steps += 1
        return self._logits(h)

    def keep(self, live: list[int]) -> None:
        """Keep only the live requests at positions `live`, in that order. Their rows keep their places
        where they can; rows past the new batch size move into the freed ones (few KV cache copies)."""
        kept = sorted(row for j in live for row in self._rows[j])
        n = len(kept)
        holes = iter(sorted(set(range(n)) - set(kept)))
        rows = list(range(n))  # rows[new] = old
        for old in kept:
            if old >= n:
                rows[next(holes)] = old
        self.t3.tfmr.keep_rows(rows, kv_len=self.prefill_len + self.steps)
        self.seq_start = self.seq_start[rows]
        new_row = {old: new for new, old in enumerate(rows)}
        self._set_rows([[new_row[row] for row in self._rows[j]] for j in live])


@torch.inference_mode()
def generate_speech_tokens_batch(t3: T3, requests: list[DecodeRequest], *, check_every: int = 4,
                                 on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Tensor]:
    """Sample speech tokens for every request in one batch; returns each request's tokens (N_j,), the stop
    token included when it was sampled, as `generate_speech_tokens` returns them.

    check_every: steps between the host syncs that find finished requests and drop them from the batch.
    on_tokens: called at every such sync as on_tokens(j, tokens of request j so far) for each request that
    got new tokens (token-level streaming); the list must not be modified.
    """
    _validate(t3, requests, check_every)
    device = t3.speech_emb.weight.device
    stop = t3.cfg.stop_speech_token
    generators = [r.generator or _generator_from_global_rng(device) for r in requests]
    max_steps = max(r.max_new_tokens for r in requests)

    decoder = BatchDecoder(t3, requests, max_steps)
    params = RowSamplingParams.stack([r.sampling for r in requests], device)
    seen = torch.zeros(len(requests), t3.cfg.speech_tokens_dict_size, dtype=torch.bool, device=device)
    seen[:, t3.cfg.start_speech_token] = True  # the repetition penalty sees BOS too
    live = list(range(len(requests)))  # request index of each live position
    out: list[list[int]] = [[] for _ in requests]
    pending: list[Tensor] = []  # (N, 1) tokens sampled since the last check

    cond, uncond = decoder.prefill()
    for i in range(max_steps):
        probs = next_token_probs_rows(cond, uncond, seen, params)  # (N, V)
        tokens = sample_rows(probs, [generators[j] for j in live])  # (N, 1)
        pending.append(tokens)
        if i == max_steps - 1:
            break
        if (i + 1) % check_every == 0 or any(requests[j].max_new_tokens == i + 1 for j in live):
            keep = _collect(torch.cat(pending, dim=1).tolist(), live, requests, out, stop)
            if on_tokens is not None:
                for j in live:
                    on_tokens(j, out[j])
            pending = []
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                decoder.keep(keep)
                params, seen, tokens = params.select(index), seen[index], tokens[index]
                live = [live[p] for p in keep]
        seen.scatter_(1, tokens, True)
        cond, uncond = decoder.step(tokens)
    if pending:
        _collect(torch.cat(pending, dim=1).tolist(), live, requests, out, stop)
        if on_tokens is not None:
            for j in live:
                on_tokens(j, out[j])
    return [torch.tensor(tokens, dtype=torch.long, device=device) for tokens in out]


def _collect(new: list[list[int]], live: list[int], requests: list[DecodeRequest], out: list[list[int]],
             stop: int) -> list[int]:
    """Append the tokens sampled since the last check (new[p]: live position p's) up to each request's end;
    returns the live positions still unfinished."""
    keep = []
    for p, j in enumerate(live):
        tokens, budget = out[j], requests[j].max_new_tokens
        for token in new[p]:
            tokens.append(token)
            if token == stop or len(tokens) == budget:
                break
        else:
            keep.append(p)
    return keep


def _generator_from_global_rng(device: torch.device) -> torch.Generator:
    seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
    return torch.Generator(device=device).manual_seed(seed)


def _validate(t3: T3, requests: list[DecodeRequest], check_every: int) -> None:
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError("requests must be a non-empty list of DecodeRequest")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    for n, r in enumerate(requests):
        problem = _request_problem(t3, r)
        if problem:
            raise ValueError(f"request {n}: {problem}")


def _request_problem(t3: T3, r: DecodeRequest) -> str | None:
    if not isinstance(r, DecodeRequest):
        return f"expected a DecodeRequest, got {type(r).__name__}"
    for name, limits in SAMPLING_RANGES.items():
        try:
            check_range(name, getattr(r, name), *limits)
        except ValueError as exc:
            return str(exc)
    max_steps = t3.speech_pos_emb.emb.num_embeddings
    if not isinstance(r.max_new_tokens, int) or not 1 <= r.max_new_tokens <= max_steps:
        return f"max_new_tokens must be an integer in [1, {max_steps}], got {r.max_new_tokens!r}"
    text, max_text, vocab = r.text_tokens, t3.text_pos_emb.emb.num_embeddings, t3.cfg.text_tokens_dict_size
    if not torch.is_tensor(text) or text.dim() != 1 or text.dtype != torch.long or not 1 <= len(text) <= max_text:
        return f"text_tokens must be a 1-D long tensor of 1 to {max_text} ids"
    if int(text.min()) < 0 or int(text.max()) >= vocab:
        return f"text token ids must lie in [0, {vocab})"
    c = r.cond
    one_voice = (isinstance(c, T3Cond) and c.speaker_emb.numel() == t3.cfg.speaker_embed_size
                 and all(v is None or v.shape[0] == 1 for v in (c.cond_prompt_speech_tokens, c.cond_prompt_speech_emb))
                 and (not torch.is_tensor(c.emotion_adv) or c.emotion_adv.numel() == 1))
    if not one_voice:
        return "cond must be a T3Cond of one voice"
    device = t3.speech_emb.weight.device
    if r.generator is not None and r.generator.device.type != device.type:
        return f"generator is on {r.generator.device}, the model on {device}"
    return None
