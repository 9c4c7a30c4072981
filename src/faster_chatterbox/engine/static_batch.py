"""Continuous T3 batching on a static KV cache, with one decode step of fixed shapes (compilable, capturable).

The batch owns a `LlamaCache` of (2 x slots, length) rows and cache slots, both powers of two (a bucket):
request slot s holds its conditional row 2s and its unconditional row 2s + 1 (a request without CFG runs
the unconditional row too: with weight 0 it cannot change the guided logits), every sequence starting at
cache slot 0. A request joins by taking a free slot (its prefix prefilled in a cache of its own, then
copied in) and leaves by freeing it: no compaction, no shifts. The cache grows only by moving to the next
bucket (one copy), when the slots or a joiner's prefix + budget do not fit.

`decode_step` is everything one token costs, on the device and without a host sync or a data-dependent
shape: embeddings of every slot's latest token at its own speech position, the backbone at each slot's own
cache position (mask and RoPE from the positions), the speech head, CFG, the processors
(sampling.next_token_probs_rows), the keyed draw (the noise of token i of a request hashed from its seed and
i: independent of batch mates and of when it joined) and stop detection, the state updated in place.
Free and finished slots run too (fixed shapes) without moving. How it runs is `step`:

- "static": eagerly, attending over the live part of the cache (a multiple of 64 slots);
- "inductor": `torch.compile(fullgraph=True, dynamic=True)` (CPU), attending over the live slots rounded up
  to 64 as the eager step does; windows share a graph (a small T3 run through slot buckets 1, 2 and 4 and
  two length buckets compiled 3 graphs, ~100 s each on a 2-core CPU);
- "cuda_graph": one CUDA graph per bucket, captured at its first step and replayed, attending over the
  whole bucket.

The host syncs every `check_every` steps only, as `DecodeBatch` does, whose API (admit / advance / remove /
empty / live) this batch shares, so the scheduler runs either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.llama import LlamaCache
from ..models.t3 import T3
from .batch_decode import DecodeBatch, DecodeRequest, PrefixCache, stream_key, _generator_from_global_rng
from .sampling import RowSamplingParams, SamplingParams, keyed_sample_rows, next_token_probs_rows

STEPS = ("dynamic", "static", "inductor", "cuda_graph")  # "dynamic": DecodeBatch, the resized cache
MIN_SLOTS_LEN = 256  # smallest length bucket
WINDOW = 64  # eager steps attend over the live slots rounded up to this


@dataclass
class StepState:
    """A batch's per-slot decode state on the device, S slots: the step's inputs, updated in place."""

    tokens: Tensor  # (S, 1) long: each slot's latest token, fed by the next step
    speech_pos: Tensor  # (S, 1) long: its speech position = tokens drawn so far = the next draw's index
    lengths: Tensor  # (S,) long: the cache slot the next feed writes
    seen: Tensor  # (S, V) bool: ids drawn, BOS included (repetition penalty)
    seeds: Tensor  # (S,) long: keyed streams
    max_new: Tensor  # (S,) long: token budgets
    active: Tensor  # (S,) bool: decoding (False: free, or finished since the last check)
    params: RowSamplingParams  # (S, 1) each

    @classmethod
    def empty(cls, slots: int, vocab: int, device: torch.device, use_top_p: bool = False) -> StepState:
        def longs(*shape):
            return torch.zeros(shape, dtype=torch.long, device=device)

        params = RowSamplingParams.stack([SamplingParams()] * slots, device)
        params.use_top_p = use_top_p
        return cls(longs(slots, 1), longs(slots, 1), longs(slots), torch.zeros(slots, vocab, dtype=torch.bool,
                   device=device), longs(slots), longs(slots), torch.zeros(slots, dtype=torch.bool, device=device),
                   params)

    def tensors(self) -> list[Tensor]:
        p = self.params
        return [self.tokens, self.speech_pos, self.lengths, self.seen, self.seeds, self.max_new, self.active,
                p.temperature, p.cfg_weight, p.repetition_penalty, p.min_p, p.top_p_drop]

    def grown(self, slots: int) -> StepState:
        """A copy with `slots` slots, the new ones free."""
        new = StepState.empty(slots, self.seen.shape[1], self.seen.device, self.params.use_top_p)
        n = self.tokens.shape[0]
        for dst, src in zip(new.tensors(), self.tensors()):
            dst[:n] = src
        return new


def decode_step(t3: T3, cache: LlamaCache, state: StepState, kv_len: int) -> Tensor:
    """One token for every slot, fixed shapes, no host sync: feeds the latest tokens, draws the next ones
    (S, 1), and advances the active slots' state in place. kv_len: cache slots attended (> every length)."""
    slots = state.tokens.shape[0]
    x = t3.speech_embeds(state.tokens, state.speech_pos).repeat_interleave(2, dim=0)  # (2S, 1, D)
    pos = state.lengths.repeat_interleave(2)[:, None]  # (2S, 1) cond and uncond rows at one position
    h = t3.tfmr(x, pos, cache, kv_len=kv_len)[:, -1]  # (2S, D)
    logits = t3.speech_head(h).float().view(slots, 2, -1)
    probs = next_token_probs_rows(logits[:, 0], logits[:, 1], state.seen, state.params)  # (S, V)
    tokens = keyed_sample_rows(probs, state.seeds, state.speech_pos[:, 0])  # (S, 1)
    state.seen.scatter_(1, tokens, True)
    drawn = state.speech_pos[:, 0] + 1
    finished = (tokens[:, 0] == t3.cfg.stop_speech_token) | (drawn >= state.max_new)
    moving = state.active.long()
    state.lengths.add_(moving)
    state.speech_pos.add_(moving[:, None])
    state.tokens.copy_(tokens)
    state.active.logical_and_(~finished)
    return tokens


_compiled_steps: dict = {}


def compiled_step(backend: str = "inductor", options: dict | None = None):
    """decode_step compiled whole (no graph breaks) with dynamic shapes: kv_len (the attended window) is
    symbolic, since on CPU attending over a whole bucket (2,048 slots for a 1,000-token budget) costs more
    than compiling saves (BENCHMARKS.md 38). options: inductor's (for example freezing and max_autotune)."""
    key = backend, tuple(sorted((options or {}).items()))
    if key not in _compiled_steps:
        _compiled_steps[key] = torch.compile(decode_step, fullgraph=True, dynamic=True, backend=backend,
                                             options=options)
    return _compiled_steps[key]


def _bucket(n: int, low: int) -> int:
    return max(low, 1 << (n - 1).bit_length())


@dataclass
class _Slot:
    key: object
    request: DecodeRequest
    tokens: list[int]
    length: int  # host mirror of the slot's cache length (an upper bound once it may have stopped)
    done: bool = False


class StaticDecodeBatch:
    """Requests sampling together on a static cache (see the module docstring); DecodeBatch's API. The
    keyed sampler only: a generator per row cannot be drawn from inside a captured step."""

    def __init__(self, t3: T3, check_every: int = 4, step: str = "static", compile_options: dict | None = None):
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if step not in STEPS[1:]:
            raise ValueError(f"step must be one of {', '.join(STEPS[1:])}, got {step!r}")
        self.device = device = t3.speech_emb.weight.device
        if step == "cuda_graph" and device.type != "cuda":
            raise ValueError(f"step 'cuda_graph' needs a CUDA model, this one is on {device}")
        self.t3, self.check_every, self.step_mode = t3, check_every, step
        self.compile_options = compile_options  # inductor's, for step "inductor"
        self.slots: list[_Slot | None] = []
        self.cache: LlamaCache | None = None
        self.state = StepState.empty(0, t3.cfg.speech_tokens_dict_size, device)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self._since_check = 0

    @property
    def live(self) -> list[_Slot]:
        return [s for s in self.slots if s is not None]

    @property
    def empty(self) -> bool:
        return not self.live

    def admit(self, keys: list, requests: list[DecodeRequest]) -> None:
        """Join `requests` (validated) under the handles `keys` into free slots; samples their token 0. If it
        raises, the batch is as it was (possibly in a larger bucket) and its live requests go on."""
        t3, device = self.t3, self.device
        prefixes = [torch.cat((t3.prefix_embeds(r.cond, r.text_tokens, cfg=True),
                               self._bos_emb().expand(2, -1, -1)), dim=1) for r in requests]  # (2, P_j, D)
        lengths = [p.shape[1] for p in prefixes]
        free = [s for s, slot in enumerate(self.slots) if slot is None]
        need_slots = len(self.slots) + max(0, len(requests) - len(free))
        need_len = max([len_ + r.max_new_tokens for len_, r in zip(lengths, requests)]
                       + [s.length + s.request.max_new_tokens - len(s.tokens) for s in self.live])
        self._reserve(need_slots, need_len, any(r.sampling.top_p < 1.0 for r in requests))
        free = [s for s, slot in enumerate(self.slots) if slot is None][: len(requests)]
        # the prefixes right-padded in one prefill: a query at position p sees only slots <= p, so the
        # padding after a prefix never reaches its logits, and its slots are overwritten before they are read
        width = max(lengths)
        x = torch.cat([F.pad(p, (0, 0, 0, width - p.shape[1])) for p in prefixes])  # (2R, width, D)
        prefill = t3.tfmr.new_cache(x.shape[0], width)
        h = t3.tfmr(x, torch.arange(width, device=device), prefill)  # (2R, width, D)
        last = torch.tensor([length - 1 for length in lengths for _ in range(2)], device=device)
        logits = t3.speech_head(h[torch.arange(x.shape[0], device=device), last]).float().view(len(requests), 2, -1)
        params = RowSamplingParams.stack([r.sampling for r in requests], device)
        seen = torch.zeros(len(requests), t3.cfg.speech_tokens_dict_size, dtype=torch.bool, device=device)
        seen[:, t3.cfg.start_speech_token] = True
        seeds = torch.tensor([stream_key(r.generator or _generator_from_global_rng(device)) for r in requests],
                             dtype=torch.long, device=device)
        tokens = keyed_sample_rows(next_token_probs_rows(logits[:, 0], logits[:, 1], seen, params), seeds,
                                   torch.zeros_like(seeds))  # (R, 1)
        seen.scatter_(1, tokens, True)
        # nothing below raises (no allocation beyond small index tensors)
        index = torch.tensor(free, dtype=torch.long, device=device)
        self.cache.write_rows(torch.stack((2 * index, 2 * index + 1), dim=1).view(-1), prefill)
        st = self.state
        st.tokens[index], st.speech_pos[index] = tokens, 1
        st.lengths[index] = torch.tensor(lengths, device=device)
        st.seen[index], st.seeds[index] = seen, seeds
        st.max_new[index] = torch.tensor([r.max_new_tokens for r in requests], device=device)
        for name in ("temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p_drop"):
            getattr(st.params, name)[index] = getattr(params, name)
        if self.empty:
            self._since_check = 1  # token 0 counts as the batch's first step
        stop = t3.cfg.stop_speech_token
        for s, key, r, length, token in zip(free, keys, requests, lengths, tokens.view(-1).tolist()):
            done = token == stop or r.max_new_tokens == 1
            st.active[s] = not done
            self.slots[s] = _Slot(key, r, [token], length, done)

    def advance(self) -> list[tuple[object, list[int], bool]]:
        """Decode to the next check; (key, tokens so far, finished) for every request with news."""
        live = self.live
        if not live:
            return []
        if any(slot.done for slot in live):  # finished at admission: leave before the next step
            return self._collect([])
        pending = []  # (S, 1) per step
        while True:
            pending.append(self._step())
            for slot in live:
                slot.length += 1
            self._since_check += 1
            if (self._since_check >= self.check_every
                    or any(len(slot.tokens) + len(pending) >= slot.request.max_new_tokens for slot in live)):
                return self._collect(torch.cat(pending, dim=1).tolist())

    def remove(self, keys: set) -> None:
        """Drop the requests with these handles (cancelled): their slots are freed."""
        for s, slot in enumerate(self.slots):
            if slot is not None and slot.key in keys:
                self._free(s)

    def _collect(self, new: list[list[int]]) -> list[tuple[object, list[int], bool]]:
        stop, reports = self.t3.cfg.stop_speech_token, []
        for s, slot in enumerate(self.slots):
            if slot is None:
                continue
            for token in (new[s] if new else []):
                if slot.done:
                    break
                slot.tokens.append(token)
                slot.done = token == stop or len(slot.tokens) == slot.request.max_new_tokens
            reports.append((slot.key, slot.tokens, slot.done))
            if slot.done:
                self._free(s)
        self._since_check = 0
        return reports

    def _free(self, s: int) -> None:
        self.slots[s] = None
        self.state.active[s] = False
        if self.empty:
            self.cache = None  # an empty batch holds no cache
            self._graphs.clear()

    def _bos_emb(self) -> Tensor:
        t3 = self.t3
        bos = torch.full((1, 1), t3.cfg.start_speech_token, dtype=torch.long, device=self.device)
        return t3.speech_embeds(bos, torch.zeros(1, dtype=torch.long, device=self.device))  # (1, 1, D)

    def _reserve(self, slots: int, length: int, use_top_p: bool) -> None:
        """Make the bucket hold `slots` slots of `length` cache slots (moving to a larger one if needed)."""
        have_slots = len(self.slots)
        have_len = self.cache.max_seq_len if self.cache is not None else 0
        new_slots, new_len = _bucket(max(slots, have_slots), 1), _bucket(max(length, have_len), MIN_SLOTS_LEN)
        if self.cache is None or (new_slots, new_len) != (have_slots, have_len):
            cache = self.t3.tfmr.new_cache(2 * new_slots, new_len)
            with torch.inference_mode(False):
                for layer in cache.layers:
                    layer.k.zero_()  # free rows and unwritten slots are read, masked: finite
                    layer.v.zero_()
            if self.cache is not None:
                cache.write_rows(torch.arange(2 * have_slots, device=self.device), self.cache)
            state = self.state.grown(new_slots)
            self.cache, self.state, self.slots = cache, state, self.slots + [None] * (new_slots - have_slots)
            self._graphs.clear()
        self.state.params.use_top_p = self.state.params.use_top_p or use_top_p

    def _step(self) -> Tensor:
        if self.step_mode == "cuda_graph":
            return self._replay()
        window = max(slot.length for slot in self.live) + 1
        kv_len = min(self.cache.max_seq_len, -(-window // WINDOW) * WINDOW)
        if self.step_mode == "inductor":
            return compiled_step(options=self.compile_options)(self.t3, self.cache, self.state, kv_len)
        return decode_step(self.t3, self.cache, self.state, kv_len)

    def _replay(self) -> Tensor:
        """The bucket's CUDA graph (captured at its first step, after a warm-up run on a side stream)."""
        key = (len(self.slots), self.cache.max_seq_len, self.state.params.use_top_p)
        if key not in self._graphs:
            kv_len = self.cache.max_seq_len
            backup = [t.clone() for t in self.state.tensors()]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                decode_step(self.t3, self.cache, self.state, kv_len)  # warm-up: allocations, lazy inits
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = decode_step(self.t3, self.cache, self.state, kv_len)
            for t, b in zip(self.state.tensors(), backup):  # the warm-up and capture advanced the state
                t.copy_(b)
            self._graphs[key] = (graph, out)
        graph, out = self._graphs[key]
        graph.replay()
        return out.clone()


def new_decode_batch(t3: T3, step: str, sampler: str, prefix_cache: PrefixCache | None = None,
                     shared_prefix_slots: int | None = None):
    """The scheduler's batch maker (`T3Scheduler(new_batch=)`) for EngineSettings.t3_step / t3_sampler:
    check_every -> a batch of `t3`; the dynamic batches share `prefix_cache` (voices' prefixes once), and
    attend to them in place from `shared_prefix_slots` prefix slots in one voice (`BatchDecoder`)."""
    if step not in STEPS:
        raise ValueError(f"t3_step must be one of {', '.join(STEPS)}, got {step!r}")
    if step == "dynamic":
        return lambda check_every: DecodeBatch(t3, check_every, sampler, prefix_cache, shared_prefix_slots)
    if sampler != "keyed":
        raise ValueError(f"t3_step {step!r} draws with the keyed sampler, not {sampler!r}")
    return lambda check_every: StaticDecodeBatch(t3, check_every, step)
