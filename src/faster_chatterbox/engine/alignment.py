"""The alignment guard of Chatterbox Multilingual v2: upstream 0.1.7's `AlignmentStreamAnalyzer`, for a batch.

Three attention heads of the multilingual T3 follow the text as speech is spoken (`ALIGNED_HEADS`). Each step
upstream averages their attention from the newest position over the text, keeps the columns up to the step
number (monotonic), and reads off where in the text the speech is; from that, before the repetition penalty:
  - the stop token is forbidden while the speech is more than 3 tokens from the text's end (texts of more
    than 5 tokens);
  - the stop token is forced (every other logit -2**15, the stop +2**15) when, after the end was reached,
    the last 3 text tokens got 5 or more attention in total (a long tail) or the earlier text more than 5
    (a repetition), or when the last two speech tokens are equal.
Upstream keeps the whole alignment matrix; only these running sums of it matter, so the guard's state is a
few numbers per sequence (tensors of N rows: no host sync, no Python per row). Upstream's HEAD removed the
guard (Multilingual v3 runs without it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

ALIGNED_HEADS = ((12, 15), (13, 11), (9, 2))  # (layer, head) of the multilingual T3, as upstream
_BIG = 2.0**15  # upstream's forcing value, safe in every dtype of 16 bits or more


def aligned_heads(n_layers: int, n_heads: int) -> dict[int, tuple[int, ...]]:
    """{layer: heads} of ALIGNED_HEADS; a smaller (test) model uses the same heads modulo its size."""
    heads: dict[int, tuple[int, ...]] = {}
    for layer, head in ALIGNED_HEADS:
        heads[layer % n_layers] = heads.get(layer % n_layers, ()) + (head % n_heads,)
    return heads


class AlignmentGuard:
    """The guard's state for N sequences; `text_start` (N,) cache slot of each one's first text token (the
    start-of-text token) relative to its own first slot, `text_len` (N,) its text tokens (start/stop included),
    `active` (N,) bool: the sequences it guards (the others' logits pass unchanged; default: all)."""

    _STATE = ("text_start", "text_len", "active", "step_no", "position", "complete", "tail", "repeat", "last")

    def __init__(self, text_start: Tensor, text_len: Tensor, stop_token: int, active: Tensor | None = None):
        n, device = len(text_len), text_len.device
        self.text_start, self.text_len, self.stop_token = text_start, text_len, stop_token
        self.width = int(text_len.max()) if n else 0  # text columns of `text_attention` (read once, at admission)
        self.active = torch.ones(n, dtype=torch.bool, device=device) if active is None else active
        self.step_no = torch.zeros(n, dtype=torch.long, device=device)
        self.position = torch.zeros(n, dtype=torch.long, device=device)  # the text position of the speech
        self.complete = torch.zeros(n, dtype=torch.bool, device=device)  # the speech reached the text's end
        self.tail = torch.zeros(n, 3, device=device)  # attention to the last 3 text tokens since completion
        self.repeat = torch.zeros(n, device=device)  # the earlier text's peak attention, summed since then
        self.last = torch.full((n, 2), -1, dtype=torch.long, device=device)  # the last two tokens fed

    def cat(self, other: AlignmentGuard) -> AlignmentGuard:
        """These sequences, then `other`'s."""
        for name in self._STATE:
            setattr(self, name, torch.cat((getattr(self, name), getattr(other, name))))
        self.width = max(self.width, other.width)
        return self

    def select(self, rows: Tensor) -> AlignmentGuard:
        for name in self._STATE:
            setattr(self, name, getattr(self, name)[rows])
        return self

    def step_guide(self, weights: list[Tensor], fed: Tensor, seq_start: Tensor | int = 0) -> Callable[[Tensor], Tensor]:
        """This step's guide for the sampler (logits -> guarded logits), from the forward's probe weights."""
        return functools.partial(self, attention=self.text_attention(weights, seq_start), fed=fed)

    def text_attention(self, weights: list[Tensor], seq_start: Tensor | int = 0) -> Tensor:
        """The aligned heads' mean attention over each sequence's text, (N, max text_len), zero past its end.
        weights: per head (N, kv_len) attention of the newest position; seq_start: each sequence's first slot."""
        attention = torch.stack(weights).mean(dim=0)  # (N, kv_len)
        columns = torch.arange(self.width, device=attention.device)  # (S,)
        slots = (self.text_start + seq_start)[:, None] + columns  # (N, S)
        inside = columns < self.text_len[:, None]
        taken = attention.gather(1, slots.clamp(max=attention.shape[1] - 1))
        return torch.where(inside, taken, torch.zeros((), device=attention.device))

    def __call__(self, logits: Tensor, attention: Tensor, fed: Tensor) -> Tensor:
        """One step: guided logits (N, V) -> guarded logits; attention (N, S) from `text_attention`; fed (N,)
        the token fed at this step (the start-of-speech token at step 0)."""
        n_text = self.text_len
        columns = torch.arange(attention.shape[1], device=attention.device)
        row = attention.masked_fill(columns > self.step_no[:, None], 0.0)  # monotonic: up to the step number
        here = row.argmax(dim=1)  # ties: the first, as upstream
        jump = here - self.position
        self.position = torch.where((jump > -4) & (jump < 7), here, self.position)
        was_complete = self.complete
        self.complete = self.complete | (self.position >= n_text - 3)

        # upstream's sums run over the frames after the one that completed the text
        last3 = (n_text[:, None] - 3 + torch.arange(3, device=row.device)).clamp_min(0)
        earlier = row.masked_fill(columns >= (n_text - 5)[:, None], 0.0).amax(dim=1)  # 0 for texts of <= 5 tokens
        self.tail = self.tail + was_complete[:, None] * row.gather(1, last3)
        self.repeat = self.repeat + was_complete * earlier
        self.last = torch.stack((self.last[:, 1], fed), dim=1)
        repeated = (self.step_no >= 2) & (self.last[:, 0] == self.last[:, 1])
        force = (was_complete & ((self.tail.amax(dim=1) >= 5) | (self.repeat > 5))) | repeated
        self.step_no = self.step_no + 1

        stop = self.stop_token
        hold = (here < n_text - 3) & (n_text > 5)
        logits_in, logits = logits, logits.clone()
        logits[:, stop] = torch.where(hold, torch.full_like(logits[:, stop], -_BIG), logits[:, stop])
        forced = torch.full_like(logits, -_BIG)
        forced[:, stop] = _BIG
        guarded = torch.where(force[:, None], forced, logits)
        return torch.where(self.active[:, None], guarded, logits_in)
