"""Batched T3 decoding: many independent sequences (texts, voices, sampling settings) in one backbone batch,
requests joining and leaving between steps (continuous batching).

Each request brings its CFG pair (conditional and unconditional row) or one row when cfg_weight == 0, laid
out as `generate_speech_tokens` lays out one sequence (see there and models/t3.py: `T3.decode_prefix`, token
i at speech position i + 1, the repetition penalty's history as the model's loop keeps it). Every live row writes the same cache slot at
each step; a row's sequence starts at its own first slot (`seq_start`), the backbone counts the row's RoPE
positions from there and masks the slots before it. The first requests of a batch are left-padded to a
common prefix length; a request joining a running batch is prefilled into new rows, its prefix ending just
before the slot the next step writes (a prefix longer than the batch's history first moves the live rows'
caches to the right).

Sampling runs per row with the request's own parameters and its own random stream, so a request's tokens
do not depend on what else is in the batch, or when it joined. With the "multinomial" sampler a stream is
the request's generator and its tokens are those `generate_speech_tokens` samples for it alone from it (the
batched matmuls round differently, ~5e-7 relative in the logits, which in practice never changes a draw);
with "keyed" (sampling.keyed_sample_rows) it is a seed drawn once from that generator, and token i's noise
is hashed from (seed, i): one launch for the whole batch instead of one per row. A request is finished by the stop token or by its own
max_new_tokens; every `check_every` steps (one host sync) finished requests leave the batch and the KV
cache and waiting ones may join. Rows that finished since the last check run on until it, and what they
sample is discarded.

Every sequence begins with its voice's conditioning (T3.cond_embeds: speaker, prompt speech, exaggeration;
Turbo's is 375 prompt tokens, 15 s), whose keys and values depend on the voice alone: with a `PrefixCache`
they are computed once per voice and copied under each sequence that begins with it, so a prefill runs over
the text alone (a window of 4 Turbo chunks in one voice: ~500 positions instead of ~1,600). With
`shared_prefix_slots` they are not copied at all: the rows' caches hold what follows the voice, and attention
reads each voice's prefix once for all its rows (models/llama.py: `SharedPrefix`). That pays where the copies
would be long: 4 Turbo rows of one voice (4 x 375 prefix slots) step 1.18x faster on a CPU, 2 rows no faster,
and Chatterbox's 34-slot prefixes never reach it (BENCHMARKS.md section 33).

The batch owns its KV cache (`BatchDecoder.cache`); the model is only read, so exact-path decodes and other
batches may run on it at the same time. Admitting requests either succeeds or leaves the batch as it was
(its live requests go on), so that a failing joiner fails alone.
"""

from __future__ import annotations

import numbers
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.llama import AttentionProbe, LlamaCache, SharedPrefix
from ..models.t3 import T3, T3Cond
from .alignment import AlignmentGuard, aligned_heads
from .sampling import (PROCESSORS, SAMPLERS, SAMPLING_RANGES, TOP_K_MAX, RowSamplingParams,
                       SamplingParams, check_range, keyed_sample_rows, next_token_probs_rows, sample_rows)
from .t3_decode import generate_speech_tokens


@dataclass(slots=True)  # slots: a misspelt or removed field is an error, not a silent new attribute
class DecodeRequest:
    cond: T3Cond  # one voice
    text_tokens: Tensor  # (L,) wrapped in start/stop text tokens
    sampling: SamplingParams = field(default_factory=SamplingParams)  # with the model's processor order
    max_new_tokens: int = 1000
    # The request's own random stream; None: a generator seeded from the global RNG (one draw per such
    # request, in request order), so seeding the global RNG still makes the batch reproducible.
    generator: torch.Generator | None = None
    alignment_guard: bool = False  # the multilingual v2 stop-token guard (engine/alignment.py), as upstream 0.1.7

    @property
    def rows(self) -> int:
        """Backbone rows: the CFG pair, or the conditional row alone when cfg_weight == 0."""
        return 2 if self.sampling.cfg_weight > 0 else 1


def decode_alone(t3: T3, r: DecodeRequest) -> Tensor:
    """`r` decoded by itself (`generate_speech_tokens`, on r's generator): what its batched decode equals."""
    return generate_speech_tokens(t3, r.cond, r.text_tokens, max_new_tokens=r.max_new_tokens, generator=r.generator,
                                  alignment_guard=r.alignment_guard, **asdict(r.sampling))


class PrefixCache:
    """The KV cache of voices' conditioning prefixes (T3.cond_embeds, positions 0..V-1), the `size` most
    recently used, by voice (the T3Cond object: a call's chunks share it, a voice library's calls too).
    Shared by the batches of one model (the scheduler's, one after another); entries live no longer than
    their voice. A prefix computed alone rounds as a 1-row forward does: in float32 its keys and values
    equal a batched prefill's to ~1e-7, as batched matmuls round anyway (module docstring)."""

    def __init__(self, t3: T3, size: int = 8):
        self.t3, self.size = t3, size
        self._entries: OrderedDict[int, tuple[weakref.ref, LlamaCache]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cond: T3Cond) -> LlamaCache:
        """One row, V slots: the keys and values of `cond`'s conditioning positions."""
        key = id(cond)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is cond:
                self._entries.move_to_end(key)
                return entry[1]
        emb = self.t3.cond_embeds(cond)  # (1, V, D)
        prefix = self.t3.tfmr.new_cache(1, emb.shape[1])
        self.t3.tfmr(emb, torch.arange(emb.shape[1], device=emb.device), prefix)
        with self._lock:
            self._entries[key] = (weakref.ref(cond, lambda _, key=key: self._forget(key)), prefix)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return prefix

    def _forget(self, key: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is None:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class BatchDecoder:
    """The backbone side of a batch: prefixes in, one step per token, requests joining and leaving.

    Works on the live requests, in order; `admit` returns the joining requests' logits for their token 0,
    `step` every live request's logits for its next token: conditional and unconditional, (N, V) each
    (the conditional ones twice for a request without CFG). `cache` holds the live rows (None when there
    are none). prefix_cache: voices' conditioning computed once (`PrefixCache`); None: every prefill whole.
    shared_prefix_slots: with a prefix cache, a fresh batch whose first requests' rows in one voice would hold
    at least this many prefix slots (rows x the voice's prefix length) attends to the voices' prefixes where
    the prefix cache holds them (`shared`, for the live rows) until it empties; None: they are copied under
    every row.
    """

    def __init__(self, t3: T3, prefix_cache: PrefixCache | None = None, shared_prefix_slots: int | None = None):
        if shared_prefix_slots is not None:  # any integer type (numpy's too), not a bool
            if (prefix_cache is None or isinstance(shared_prefix_slots, bool)
                    or not isinstance(shared_prefix_slots, numbers.Integral) or shared_prefix_slots < 1):
                raise ValueError(f"shared_prefix_slots must be None or a positive integer with a prefix cache, "
                                 f"got {shared_prefix_slots!r}")
            shared_prefix_slots = int(shared_prefix_slots)
        self.t3, self.prefix_cache, self.shared_prefix_slots = t3, prefix_cache, shared_prefix_slots
        self.sharing = False  # this batch's layout: the voices' prefixes outside the cache
        self.shared: SharedPrefix | None = None  # the live rows' voices while sharing
        self._voices: list[LlamaCache] = []  # each live request's voice prefix while sharing
        self._stacked: tuple[tuple[int, ...], list] | None = None  # the last SharedPrefix's voices and layers
        self.device = device = t3.speech_emb.weight.device
        self.cache: LlamaCache | None = None
        self.seq_start = torch.zeros(0, dtype=torch.long, device=device)  # (B,) each row's first slot
        self.positions = torch.zeros(0, 1, dtype=torch.long, device=device)  # (N, 1) speech position of the next feed
        self.next_slot = 0  # the cache slot the next step writes
        self._slots_needed = 0  # slots the live requests may still reach
        # watch=True forwards also leave the aligned heads' attention of the conditional rows (N, kv_len) here
        self.probe = AttentionProbe(aligned_heads(t3.cfg.llama.n_layers, t3.cfg.llama.n_heads))
        self.attention: list[Tensor] = []
        self.attention_start = self.seq_start  # (N,) first slot of the sequences `attention` is of
        self.text_start = torch.zeros(0, dtype=torch.long, device=device)  # (N,) text's first slot in its sequence
        self._set_rows([])

    def admit(self, requests: list[DecodeRequest], watch: bool = False) -> tuple[Tensor, Tensor]:
        """Prefill `requests` into new rows after the live ones; their logits for token 0. A prefix longer
        than the batch's history first moves every live row's cache to the right to make room in front.
        If it raises, the live requests are as they were (their cache possibly moved) and go on."""
        t3 = self.t3
        old_rows, new_rows = len(self.seq_start), sum(r.rows for r in requests)
        voices = [self.prefix_cache.get(r.cond) for r in requests] if self.prefix_cache is not None else []
        sharing = self.sharing if old_rows else self._share(requests, voices)
        prefixes = self._prefixes(requests)  # (R_j, P_j, D)
        if sharing:  # the rows' own part: what follows the voice
            prefixes = [p[:, v.max_seq_len :] for p, v in zip(prefixes, voices)]
        width, budget = max(p.shape[1] for p in prefixes), max(self._slots(r) for r in requests)
        if old_rows:
            if width > self.next_slot:
                self._shift(self.next_slot - width)
            if max(self._slots_needed, self.next_slot + budget) > self.cache.max_seq_len:
                self._shift(min(int(self.seq_start.min()), self.next_slot - width))  # leading slots no row uses
            next_slot, cache = self.next_slot, self.cache
            needed = max(self._slots_needed, next_slot + budget)
            cache.resize(old_rows + new_rows, needed)
        else:  # a fresh batch: the prefixes left-padded to a common length
            next_slot, needed = width, width + budget
            cache = t3.tfmr.new_cache(new_rows, needed)
        try:
            starts = torch.tensor([next_slot - p.shape[1] for p in prefixes for _ in range(p.shape[0])],
                                  device=self.device)
            x = torch.cat([F.pad(p, (0, 0, width - p.shape[1], 0)) for p in prefixes])  # (R, width, D)
            run = (width if self.prefix_cache is None or sharing
                   else self._cached_prefixes(requests, prefixes, cache, old_rows, next_slot))
            # the last `run` slots are computed: every row's text and what of its voice (or padding) lies there
            x = x[:, width - run :]
            slots = torch.arange(next_slot - run, next_slot, device=self.device)
            shared = (self._shared_prefix([v for v, r in zip(voices, requests) for _ in range(r.rows)], keep=False)
                      if sharing else None)
            h = t3.tfmr(x, slots, cache, kv_len=next_slot, seq_start=starts, rows=slice(old_rows, old_rows + new_rows),
                        probe=self.probe if watch else None, shared=shared)[:, -1]
            logits = self._out(h)  # (R, V)
        except BaseException:
            if old_rows:
                cache.resize(old_rows, needed)  # the joiners' rows leave again
            raise
        self.cache, self.next_slot, self._slots_needed = cache, next_slot, needed
        self.sharing, self._voices = sharing, (self._voices + voices if sharing else [])
        self.seq_start = torch.cat((self.seq_start, starts))
        self.text_start = torch.cat((self.text_start, torch.tensor(
            [p.shape[1] - len(r.text_tokens) - 2 for p, r in zip(prefixes, requests)], device=self.device)))
        token_0_at = torch.ones(len(requests), 1, dtype=torch.long, device=self.device)  # speech position 1
        self.positions = torch.cat((self.positions, token_0_at))
        first = [old_rows + sum(r.rows for r in requests[:j]) for j in range(len(requests))]
        self._set_rows(self._rows + [list(range(f, f + r.rows)) for f, r in zip(first, requests)])
        local = [f - old_rows for f in first]
        self._watched(watch, local, starts[local])
        return logits[local], logits[[f + r.rows - 1 for f, r in zip(local, requests)]]

    def _share(self, requests: list[DecodeRequest], voices: list[LlamaCache]) -> bool:
        """Whether a fresh batch of `requests` shares its voices' prefixes: one voice's copies under its rows
        would take `shared_prefix_slots` slots."""
        if self.shared_prefix_slots is None:
            return False
        slots: dict[int, int] = {}
        for r, voice in zip(requests, voices):
            slots[id(voice)] = slots.get(id(voice), 0) + r.rows * voice.max_seq_len
        return max(slots.values()) >= self.shared_prefix_slots

    def _shared_prefix(self, row_voices: list[LlamaCache], keep: bool = True) -> SharedPrefix:
        """The `SharedPrefix` of rows in these voices (one per row). keep: its stacked prefixes are kept for the
        next call while the batch's voices stay the same (the live rows'; not a prefill's joiners', which would
        make the live rows' stack be rebuilt after every admission)."""
        distinct = list({id(v): v for v in row_voices}.values())
        group = {id(v): g for g, v in enumerate(distinct)}
        key = tuple(group)
        layers = self._stacked[1] if self._stacked is not None and self._stacked[0] == key else None
        shared = SharedPrefix.of(distinct, [group[id(v)] for v in row_voices], layers)
        if keep:
            self._stacked = (key, shared.layers)
        return shared

    def _cached_prefixes(self, requests: list[DecodeRequest], prefixes: list[Tensor], cache: LlamaCache,
                         first_row: int, next_slot: int) -> int:
        """Copy each joining request's voice prefix from the prefix cache into its rows' slots (its sequence's
        first V); the prefill positions still to compute: the longest prefix past its voice. The padding in
        front of a shorter sequence that the computed positions do not cover is zeroed (read masked)."""
        voices = [self.prefix_cache.get(r.cond) for r in requests]
        run = max(p.shape[1] - v.max_seq_len for p, v in zip(prefixes, voices))
        row = first_row
        for p, r, voice in zip(prefixes, requests, voices):
            rows, start = slice(row, row + r.rows), next_slot - p.shape[1]
            cache.zero_slots(rows, min(start, next_slot - run))
            cache.write_rows(rows, voice, start)
            row += r.rows
        return run

    def _watched(self, watch: bool, rows, starts: Tensor) -> None:
        self.attention = [w[rows] for w in self.probe.weights] if watch else []
        self.attention_start = starts

    def _prefixes(self, requests: list[DecodeRequest]) -> list[Tensor]:
        """Each request's prefix rows (R_j, P_j, D): the autoregressive layout of the model (`T3.decode_prefix`)."""
        return [self.t3.decode_prefix(r.cond, r.text_tokens, cfg=r.rows == 2) for r in requests]

    def _slots(self, request: DecodeRequest) -> int:
        """Cache slots a request may fill after its prefix."""
        return request.max_new_tokens

    def _out(self, h: Tensor) -> Tensor:
        """What `admit` returns of the prefixes' last hidden states (R, D): the logits for token 0 (R, V)."""
        return self.t3.speech_head(h).float()

    def _shift(self, offset: int) -> None:
        """Move every live row's history `offset` slots to the left (dropping leading slots no row uses) or,
        negative, to the right (making room in front)."""
        if offset == 0:
            return
        if offset < 0:
            self.cache.resize(len(self.seq_start), self.next_slot - offset)
        self.cache.shift(offset, self.next_slot)
        self.seq_start = self.seq_start - offset
        self.next_slot -= offset
        self._slots_needed -= offset

    def _set_rows(self, rows: list[list[int]]) -> None:
        """rows[j]: the backbone rows of live request j, its conditional row first."""
        self._rows = rows
        self.cond_rows = torch.tensor([r[0] for r in rows], dtype=torch.long, device=self.device)  # (N,)
        self.uncond_rows = torch.tensor([r[-1] for r in rows], dtype=torch.long, device=self.device)  # (N,)
        request = [0] * sum(len(r) for r in rows)
        for j, request_rows in enumerate(rows):
            for row in request_rows:
                request[row] = j
        self.row_request = torch.tensor(request, dtype=torch.long, device=self.device)  # (B,) live request of each row
        self.shared = self._shared_prefix([self._voices[j] for j in request]) if self.sharing and rows else None

    def step(self, tokens: Tensor, watch: bool = False) -> tuple[Tensor, Tensor]:
        """Feed each live request's latest token (N, 1) at its own speech position; logits for the next.
        watch: also leave the aligned heads' attention in `attention`."""
        x = self.t3.speech_embeds(tokens, self.positions)[self.row_request]  # (B, 1, D)
        slot = self.next_slot
        slots = torch.arange(slot, slot + 1, device=self.device)
        h = self.t3.tfmr(x, slots, self.cache, kv_len=slot + 1, seq_start=self.seq_start,
                         probe=self.probe if watch else None, shared=self.shared)[:, -1]  # (B, D)
        self._watched(watch, self.cond_rows, self.seq_start[self.cond_rows])
        self.next_slot += 1
        self.positions += 1
        logits = self.t3.speech_head(h).float()  # (B, V)
        return logits[self.cond_rows], logits[self.uncond_rows]

    def keep(self, live: list[int]) -> list[int]:
        """Keep only the live requests at positions `live`, in that order. Their rows keep their places
        where they can; rows past the new batch size move into the freed ones (few KV cache copies). An
        empty batch frees its cache. Returns the old row of each new row."""
        kept = sorted(row for j in live for row in self._rows[j])
        n = len(kept)
        holes = iter(sorted(set(range(n)) - set(kept)))
        rows = list(range(n))  # rows[new] = old
        for old in kept:
            if old >= n:
                rows[next(holes)] = old
        if n:
            self.cache.keep_rows(rows, kv_len=self.next_slot)
        else:
            self.cache, self.sharing, self._stacked = None, False, None
        self._voices = [self._voices[j] for j in live] if self.sharing else []
        self.seq_start = self.seq_start[rows]
        self.positions = self.positions[live]
        self.text_start = self.text_start[live]
        new_row = {old: new for new, old in enumerate(rows)}
        self._set_rows([[new_row[row] for row in self._rows[j]] for j in live])
        return rows


@dataclass
class _Live:
    key: object  # the caller's handle
    request: DecodeRequest
    generator: torch.Generator
    tokens: list[int]  # sampled so far, collected at checks
    done: bool = False


class DecodeBatch:
    """Requests sampling together on one `BatchDecoder`: they join with `admit` (between checks) and
    `advance` runs the batch to its next check, reporting new tokens and dropping finished requests.
    sampler: "multinomial" (one draw per row on its generator) or "keyed" (sampling.SAMPLERS); prefix_cache,
    shared_prefix_slots: `BatchDecoder`'s."""

    def __init__(self, t3: T3, check_every: int = 4, sampler: str = "multinomial",
                 prefix_cache: PrefixCache | None = None, shared_prefix_slots: int | None = None):
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        self.t3, self.check_every, self.sampler = t3, check_every, sampler
        self.decoder = BatchDecoder(t3, prefix_cache, shared_prefix_slots)
        self.live: list[_Live] = []
        device, vocab = self.decoder.device, t3.cfg.speech_tokens_dict_size
        self._params = RowSamplingParams.stack([], device)
        self._seen = torch.zeros(0, vocab, dtype=torch.bool, device=device)  # (N, V) ids sampled, BOS included
        self._unfed = torch.zeros(0, 1, dtype=torch.long, device=device)  # (N, 1) latest tokens, not yet fed
        self._guard = self._new_guard([])
        self._seeds = torch.zeros(0, dtype=torch.long, device=device)  # (N,) keyed streams
        self._drawn = torch.zeros(0, dtype=torch.long, device=device)  # (N,) tokens drawn: the next draw's index
        self._since_check = 0

    def _new_guard(self, requests: list[DecodeRequest]) -> AlignmentGuard:
        device = self.decoder.device
        return AlignmentGuard(self.decoder.text_start[len(self.decoder.text_start) - len(requests):],
                              torch.tensor([len(r.text_tokens) for r in requests], dtype=torch.long, device=device),
                              self.t3.cfg.stop_speech_token,
                              torch.tensor([r.alignment_guard for r in requests], dtype=torch.bool, device=device))

    @property
    def _watching(self) -> bool:
        return any(live.request.alignment_guard for live in self.live)

    @property
    def empty(self) -> bool:
        return not self.live

    def admit(self, keys: list, requests: list[DecodeRequest]) -> None:
        """Join `requests` (validated) under the handles `keys`; samples their token 0. If it raises, the
        batch is as it was and its live requests go on."""
        device = self.decoder.device
        watch = any(r.alignment_guard for r in requests)
        cond, uncond = self.decoder.admit(requests, watch)
        try:
            guard = self._new_guard(requests)
            bos = torch.full((len(requests),), self.t3.cfg.start_speech_token, dtype=torch.long, device=device)
            guide = guard.step_guide(self.decoder.attention, bos, self.decoder.attention_start) if watch else None
            params = RowSamplingParams.stack([r.sampling for r in requests], device)
            seen = torch.zeros(len(requests), self.t3.cfg.speech_tokens_dict_size, dtype=torch.bool, device=device)
            seen[:, self.t3.cfg.start_speech_token] = True
            generators = [r.generator or _generator_from_global_rng(device) for r in requests]
            seeds = torch.tensor([stream_key(g) for g in generators] if self.sampler == "keyed" else [0] * len(requests),
                                 dtype=torch.long, device=device)
            drawn = torch.zeros_like(seeds)
            tokens = self._sample(next_token_probs_rows(cond, uncond, seen, params, guide), generators, seeds,
                                  drawn)  # (R, 1)
            if not self.t3.cfg.penalize_bos:
                seen[:, self.t3.cfg.start_speech_token] = False  # Turbo's history: the generated ids alone
            seen.scatter_(1, tokens, True)
        except BaseException:
            self.decoder.keep(list(range(len(self.live))))  # the joiners leave the decoder again
            raise
        if self.empty:
            self._since_check = 1  # token 0 counts as the batch's first step
        self._params = self._params.cat(params)
        self._guard = self._guard.cat(guard)
        self._seen, self._unfed = torch.cat((self._seen, seen)), torch.cat((self._unfed, tokens))
        self._seeds, self._drawn = torch.cat((self._seeds, seeds)), torch.cat((self._drawn, drawn + 1))
        stop = self.t3.cfg.stop_speech_token
        for key, r, g, token in zip(keys, requests, generators, tokens.view(-1).tolist()):
            self.live.append(_Live(key, r, g, [token], done=token == stop or r.max_new_tokens == 1))

    def advance(self) -> list[tuple[object, list[int], bool]]:
        """Decode to the next check; (key, tokens so far, finished) for every request with news. The token
        lists are the batch's own: read them, do not modify them."""
        if not self.live:
            return []
        if any(live.done for live in self.live):  # finished at admission: leave before the next step
            return self._collect([[] for _ in self.live])
        pending = []  # (N, 1) per step
        watch = self._watching
        while True:
            cond, uncond = self.decoder.step(self._unfed, watch)
            guide = (self._guard.step_guide(self.decoder.attention, self._unfed.view(-1), self.decoder.attention_start)
                     if watch else None)
            probs = next_token_probs_rows(cond, uncond, self._seen, self._params, guide)  # (N, V)
            tokens = self._sample(probs, [live.generator for live in self.live], self._seeds, self._drawn)  # (N, 1)
            self._drawn += 1
            self._seen.scatter_(1, tokens, True)
            self._unfed = tokens
            pending.append(tokens)  # every live request joined before the last check: all have these steps
            self._since_check += 1
            if (self._since_check >= self.check_every
                    or any(len(live.tokens) + len(pending) >= live.request.max_new_tokens for live in self.live)):
                return self._collect(torch.cat(pending, dim=1).tolist())

    def _sample(self, probs: Tensor, generators: list[torch.Generator], seeds: Tensor, drawn: Tensor) -> Tensor:
        if self.sampler == "keyed":
            return keyed_sample_rows(probs, seeds, drawn)
        return sample_rows(probs, generators)

    def remove(self, keys: set) -> None:
        """Drop the requests with these handles (cancelled)."""
        self._keep([p for p, live in enumerate(self.live) if live.key not in keys])

    def _collect(self, new: list[list[int]]) -> list[tuple[object, list[int], bool]]:
        """Append the tokens sampled since the last check (new[p]: live position p's) up to each request's
        end, report, and drop the finished requests."""
        stop, reports, keep = self.t3.cfg.stop_speech_token, [], []
        for p, (live, tokens) in enumerate(zip(self.live, new)):
            for token in tokens:
                if live.done:
                    break
                live.tokens.append(token)
                live.done = token == stop or len(live.tokens) == live.request.max_new_tokens
            reports.append((live.key, live.tokens, live.done))
            if not live.done:
                keep.append(p)
        self._since_check = 0
        if len(keep) < len(self.live):
            self._keep(keep)
        return reports

    def _keep(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self.decoder.device)
        self.decoder.keep(keep)
        self._params, self._seen, self._unfed = self._params.select(index), self._seen[index], self._unfed[index]
        self._guard = self._guard.select(index)
        self._seeds, self._drawn = self._seeds[index], self._drawn[index]
        self.live = [self.live[p] for p in keep]


@torch.inference_mode()
def generate_speech_tokens_batch(t3: T3, requests: list[DecodeRequest], *, check_every: int = 4,
                                 on_tokens: Callable[[int, list[int]], None] | None = None,
                                 sampler: str = "multinomial", prefix_cache: PrefixCache | None = None,
                                 shared_prefix_slots: int | None = None) -> list[Tensor]:
    """Sample speech tokens for every request in one batch; returns each request's tokens (N_j,), the stop
    token included when it was sampled, as `generate_speech_tokens` returns them.

    check_every: steps between the host syncs that find finished requests and drop them from the batch.
    on_tokens: called at every such sync as on_tokens(j, tokens of request j so far) for each request that
    got new tokens (token-level streaming); the list must not be modified.
    sampler: "multinomial" or "keyed" (DecodeBatch). prefix_cache: voices' prefixes computed once (`PrefixCache`),
    attended in place from `shared_prefix_slots` prefix slots in one voice (`BatchDecoder`).
    """
    validate_requests(t3, requests, request_problem, "DecodeRequest")
    return decode_all(DecodeBatch(t3, check_every, sampler, prefix_cache, shared_prefix_slots), requests, on_tokens)


def decode_all(batch, requests: list, on_tokens: Callable[[int, list[int]], None] | None = None) -> list[Tensor]:
    """Run `requests` on a fresh `batch` (DecodeBatch's interface) to the end; each request's tokens (N_j,)."""
    batch.admit(list(range(len(requests))), list(requests))
    out: list[list[int]] = [[] for _ in requests]
    reported = [0] * len(requests)
    while not batch.empty:
        for j, tokens, _ in batch.advance():
            if on_tokens is not None and len(tokens) > reported[j]:
                on_tokens(j, tokens)
            out[j], reported[j] = tokens, len(tokens)
    device = batch.t3.speech_emb.weight.device
    return [torch.tensor(tokens, dtype=torch.long, device=device) for tokens in out]


def stream_key(generator: torch.Generator) -> int:
    """A keyed sampler's seed: one draw from the request's generator (so seeding it seeds the stream)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.long, generator=generator, device=generator.device))


def _generator_from_global_rng(device: torch.device) -> torch.Generator:
    seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
    return torch.Generator(device=device).manual_seed(seed)


def validate_requests(t3: T3, requests: list, problem: Callable[[T3, object], str | None], kind: str) -> None:
    """A ValueError naming the first bad request (`problem` says what is wrong with one)."""
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError(f"requests must be a non-empty list of {kind}")
    for n, r in enumerate(requests):
        wrong = problem(t3, r)
        if wrong:
            raise ValueError(f"request {n}: {wrong}")


def request_problem(t3: T3, r: DecodeRequest) -> str | None:
    if not isinstance(r, DecodeRequest):
        return f"expected a DecodeRequest, got {type(r).__name__}"
    s = r.sampling
    if not isinstance(s, SamplingParams):
        return f"sampling must be a SamplingParams, got {type(s).__name__}"
    for name, limits in SAMPLING_RANGES.items():
        try:
            check_range(name, getattr(s, name), *limits)
        except ValueError as exc:
            return str(exc)
    if not isinstance(s.top_k, int) or isinstance(s.top_k, bool) or not 0 <= s.top_k <= TOP_K_MAX:
        return f"top_k must be an integer in [0, {TOP_K_MAX}], got {s.top_k!r}"
    if not isinstance(s.processors, tuple) or not set(s.processors) <= set(PROCESSORS):
        return f"processors must be a tuple of names from {PROCESSORS}, got {s.processors!r}"
    return input_problem(t3, r)


def input_problem(t3: T3, r) -> str | None:
    """What is wrong with a request's token cap, text, voice or generator (any decoder's request), or None."""
    max_steps = t3.max_speech_steps
    if not isinstance(r.max_new_tokens, int) or not 1 <= r.max_new_tokens <= max_steps:
        return f"max_new_tokens must be an integer in [1, {max_steps}], got {r.max_new_tokens!r}"
    text, max_text, vocab = r.text_tokens, t3.max_text_len, t3.cfg.text_tokens_dict_size
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
