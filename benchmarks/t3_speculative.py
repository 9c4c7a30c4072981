"""Would speculative decoding pay for T3? Verify cost on this machine, and draft acceptance from the model.

There is no draft model for the 0.5B T3, so the candidates are drafts that cost ~nothing: prompt lookup
(n-gram continuation from the sequence so far, including the voice's prompt tokens) and a repeat-last-token
draft (silences are runs of one token). Under speculative sampling a draft token d is accepted with
probability p(d), p the target's final sampling distribution (CFG, repetition penalty, temperature, min_p),
so with k drafts a verify forward yields E = 1 + sum_{j<=k} prod_{i<=j} p(d_i) tokens on average.

  (a) cost: one backbone forward of 1 + k new tokens for the CFG pair against a one-token step, at KV
      length `--context`, for fp32 and bf16 (interleaved, medians);
  (b) acceptance: `--steps` tokens sampled by the model, teacher-forced; at each position the drafts a
      drafter would propose from the history, and their acceptance probabilities under p.
Speed-up = E / cost(k). Random weights give near-flat distributions (acceptance ~ 1/|min_p set|), so (b)
is only meaningful with `--checkpoint DIR` holding the real weights; (a) holds for any weights.

    python benchmarks/t3_speculative.py [--checkpoint DIR] [--steps 300] [--context 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from t3_precision import load_t3, random_inputs, teacher_forced_logits  # noqa: E402

from faster_chatterbox.bench import _machine  # noqa: E402
from faster_chatterbox.engine.quantize import reduce_precision_  # noqa: E402
from faster_chatterbox.engine.sampling import SamplingParams, next_token_probs  # noqa: E402
from faster_chatterbox.engine.t3_decode import generate_speech_tokens  # noqa: E402


@torch.inference_mode()
def forward_ms(t3, context: int, new: int, rounds: int) -> float:
    """Median ms of one backbone forward of `new` tokens for the CFG pair after `context` cached slots."""
    d = t3.cfg.llama.dim
    cache = t3.tfmr.new_cache(2, context + new)
    pos = torch.arange(context, context + new)
    x = torch.randn(2, new, d).to(t3.speech_emb.weight.dtype)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        h = t3.tfmr(x, pos, cache, kv_len=context + new)
        t3.speech_head(h)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def prompt_lookup(history: list[int], k: int, n: int = 3) -> list[int]:
    """The k tokens that followed the latest earlier occurrence of the last n tokens (fewer if none)."""
    if len(history) <= n:
        return []
    key = history[-n:]
    for start in range(len(history) - n - 1, -1, -1):
        if history[start : start + n] == key:
            return history[start + n : start + n + k]
    return []


def repeat_last(history: list[int], k: int) -> list[int]:
    return history[-1:] * k


@torch.inference_mode()
def acceptance(t3, cond, text, steps: int, k: int, seed: int) -> dict:
    """Mean accepted tokens per verify (E) for each drafter, over the teacher-forced positions."""
    torch.manual_seed(seed)
    tokens = generate_speech_tokens(t3, cond, text, max_new_tokens=steps)
    logits = teacher_forced_logits(t3, cond, text, tokens)  # (2, S, V)
    params, cfg = SamplingParams(), t3.cfg
    seen = torch.zeros(1, cfg.speech_tokens_dict_size, dtype=torch.bool)
    seen[0, cfg.start_speech_token] = True
    probs = []
    for i in range(logits.shape[1]):
        probs.append(next_token_probs(logits[:, i], seen, params)[0])
        seen[0, tokens[i]] = True
    prompt = cond.cond_prompt_speech_tokens.reshape(-1).tolist()
    seq = tokens.tolist()
    result = {}
    for name, drafter in (("prompt_lookup", prompt_lookup), ("repeat_last", repeat_last)):
        gains, proposed = [], 0
        for i in range(1, len(seq) - k):
            drafts = drafter(prompt + seq[:i], k)
            proposed += bool(drafts)
            gain, chain = 1.0, 1.0
            for j, d in enumerate(drafts):
                chain *= float(probs[i + j][d])  # accepted only if every earlier draft was
                gain += chain
            gains.append(gain)
        result[name] = {"tokens_per_verify": statistics.mean(gains), "drafted_fraction": proposed / len(gains)}
    entropy = statistics.mean(float(-(p[p > 0] * p[p > 0].log()).sum()) for p in probs)
    result["mean_entropy_nats"] = entropy
    result["mean_top1_prob"] = statistics.mean(float(p.max()) for p in probs)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--draft", type=int, default=4, help="draft tokens per verify")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t3, cond = load_t3(args.checkpoint, seed=0)
    models = {"fp32": t3, "bf16": reduce_precision_(copy.deepcopy(t3), "bf16")}
    models["bf16"].tfmr.kv_dtype = torch.float32  # as the presets run it on CPU

    print(f"machine: {_machine('cpu')}")
    print(f"(a) verify cost at KV length {args.context}, CFG pair, medians of {args.rounds} (ms; ratio to 1 token)")
    sizes = [1, 2, 3, 5, 9]
    cost = {name: {n: [] for n in sizes} for name in models}
    for _ in range(args.rounds):  # interleaved
        for name, model in models.items():
            for n in sizes:
                cost[name][n].append(forward_ms(model, args.context, n, 1))
    for name in models:
        base = statistics.median(cost[name][1])
        cells = "  ".join(f"{n} tok {statistics.median(cost[name][n]):7.1f} ({statistics.median(cost[name][n]) / base:.2f}x)"
                          for n in sizes)
        print(f"  {name}: {cells}")

    if cond is None:
        cond, text = random_inputs(t3, seed=0)
    else:
        _, text = random_inputs(t3, seed=0)
    acc = acceptance(t3, cond, text, args.steps, args.draft, seed=0)
    real = args.checkpoint is not None and not (args.checkpoint / "RANDOM-WEIGHTS.txt").is_file()
    weights = "the checkpoint's" if real else "RANDOM (acceptance is not meaningful)"
    print(f"(b) acceptance, {args.steps} sampled tokens, {args.draft} drafts per verify, weights: {weights}")
    print(f"  mean entropy {acc['mean_entropy_nats']:.2f} nats, mean top-1 probability {acc['mean_top1_prob']:.3f}")
    n_verify = args.draft + 1
    for name in ("prompt_lookup", "repeat_last"):
        e = acc[name]["tokens_per_verify"]
        speedups = ", ".join(f"{m} {e / (statistics.median(cost[m][n_verify]) / statistics.median(cost[m][1])):.2f}x"
                             for m in models)
        print(f"  {name}: drafts at {acc[name]['drafted_fraction']:.0%} of positions, "
              f"{e:.3f} tokens per verify -> speed-up {speedups}")


if __name__ == "__main__":
    main()
