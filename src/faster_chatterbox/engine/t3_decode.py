"""T3's autoregressive speech-token decode loop, token for token what upstream's `T3.inference` samples.

One prefill into a preallocated KV cache, then one backbone forward per token, in the model's layout
(models/t3.py: Llama T3s feed BOS twice; Turbo's GPT-2 once) and its processor order (`processors`,
engine/sampling.py; Turbo's `T3.inference_turbo` also has top_k). With cfg_weight > 0 the
backbone runs the conditional and unconditional rows as a batch of two; with cfg_weight == 0 only the
conditional row runs (upstream crashes there; unguided sampling is what the setting means). The cache
belongs to the call, so any number of threads may decode with one model at once.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm import tqdm

from ..models.llama import AttentionProbe, LlamaCache
from ..models.t3 import T3, T3Cond
from .alignment import AlignmentGuard, aligned_heads
from .sampling import LLAMA_ORDER, SamplingParams, next_token_probs, sample


@torch.inference_mode()
def generate_speech_tokens(
    t3: T3,
    cond: T3Cond,
    text_tokens: Tensor,
    *,
    max_new_tokens: int = 1000,
    temperature: float = 0.8,
    cfg_weight: float = 0.5,
    repetition_penalty: float = 1.2,
    min_p: float = 0.05,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    cache: LlamaCache | None = None,
    top_k: int = 0,
    processors: tuple[str, ...] = LLAMA_ORDER,
    alignment_guard: bool = False,
) -> Tensor:
    """Sample speech tokens for `text_tokens` (L,) (wrapped in start/stop text tokens where the model's
    layout wraps them). top_k 0: off; processors: their order (the model's, see engine/sampling.py).

    generator: the random stream to sample from; None: the global RNG, as upstream.
    cache: a cache to decode in (resized to fit; its allocation is reused when large enough), e.g. the one
    of the previous call of this thread; None: a new one, freed on return. Not shared between threads.

    alignment_guard: steer the stop token by the text alignment of three attention heads, as upstream 0.1.7
    does for the multilingual model (engine/alignment.py).

    Returns the sampled tokens (N,), the stop token included when it was sampled.
    """
    cfg = t3.cfg
    device = t3.speech_emb.weight.device
    params = SamplingParams(temperature, cfg_weight, repetition_penalty, min_p, top_p, top_k, processors)
    assert 0 < max_new_tokens <= t3.max_speech_steps, "speech positions run past the learned table"

    x = t3.decode_prefix(cond, text_tokens, cfg=cfg_weight > 0)  # (R, P, D)
    speech_pos = torch.arange(max_new_tokens, device=device)  # token i is fed at speech position i + 1
    rows, prefill_len = x.shape[:2]
    cache_pos = torch.arange(prefill_len + max_new_tokens, device=device)
    if cache is None:
        cache = t3.tfmr.new_cache(rows, prefill_len + max_new_tokens)
    else:
        cache.resize(rows, prefill_len + max_new_tokens)  # every slot a query reads is written first

    probe = guard = None
    if alignment_guard:
        probe = AttentionProbe(aligned_heads(cfg.llama.n_layers, cfg.llama.n_heads))
        text_len = torch.tensor([len(text_tokens)], device=device)
        guard = AlignmentGuard(prefill_len - 2 - text_len, text_len, cfg.stop_speech_token)
    fed = torch.full((1,), cfg.start_speech_token, dtype=torch.long, device=device)

    h = t3.tfmr(x, cache_pos[:prefill_len], cache, kv_len=prefill_len, probe=probe)[:, -1]  # (R, D)
    # The repetition penalty sees every generated id, BOS included.
    seen = torch.zeros(1, cfg.speech_tokens_dict_size, dtype=torch.bool, device=device)
    seen[0, cfg.start_speech_token] = True
    tokens = []
    for i in tqdm(range(max_new_tokens), desc="Sampling", leave=False, disable=None):
        guide = None if guard is None else guard.step_guide([w[:1] for w in probe.weights], fed)  # conditional row
        probs = next_token_probs(t3.speech_head(h).float(), seen, params, guide)  # (1, V)
        token = sample(probs, generator)  # (1, 1)
        fed = token.view(1)
        tokens.append(token)
        if token.item() == cfg.stop_speech_token or i == max_new_tokens - 1:
            break
        if i == 0 and not cfg.penalize_bos:
            seen[0, cfg.start_speech_token] = False  # from token 1 on, the history is the generated ids alone
        seen.scatter_(1, token, True)
        x = t3.speech_embeds(token, speech_pos[i + 1 : i + 2]).expand(rows, -1, -1)  # (R, 1, D)
        pos = prefill_len + i
        h = t3.tfmr(x, cache_pos[pos : pos + 1], cache, kv_len=pos + 1, probe=probe)[:, -1]
    return torch.cat(tokens).view(-1)
