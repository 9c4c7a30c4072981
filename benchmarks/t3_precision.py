"""T3 in reduced precision: decode speed and how far its sampling distributions move from float32.

Full-size T3, random weights (random_checkpoint's scheme) or `--checkpoint DIR`. Every variant is a
copy of the same float32 model converted by engine/quantize.py, all in one process:

  (a) speed: one decode step as generate_speech_tokens runs it (speech head, sampling processors, token
      embedding, backbone) with the CFG pair (batch 2) and without (batch 1), at KV length ~`--context`.
      Variants and batch sizes are interleaved over `--rounds` rounds; medians over all timed steps.
  (b) quality: `--steps` speech tokens sampled by the float32 model are teacher-forced through every
      variant; at each step the sampling distribution (CFG combine, repetition penalty 1.2,
      temperature 0.8, min_p 0.05: engine/sampling.py's next_token_probs) is compared with float32's:
        kl      KL(fp32 || variant) before min_p (min_p's hard cut makes KL infinite whenever one
                token crosses the bar in only one of the two), mean and max over steps
        tv      total variation distance of the final sampling distributions (after min_p), mean and
                max: the probability mass that moved (0 = same distribution, 1 = disjoint)
        cut     fraction of steps where min_p keeps a different set of tokens
        top1    agreement of the argmax of the raw CFG-combined logits
      With --stepwise the logits come as a decode computes them: the prefix in one forward, then one
      position per forward (kernels that a layer picks by its row count, as Int8Linear and the packed
      layers' bf16_past_rows do, then run as in a decode); otherwise from one forward over all positions.
      Random weights give flat logits; a "peaky" model (speech head x`--head-scale`, exact in every
      dtype for a power of two) is measured too. fp32's entropy (final distribution) is reported.
  (c) kernels (CPU): one pass over the backbone's Linears with M bf16 rows, for the three int8 matmuls
      Int8Linear chooses between (by M) and bf16 F.linear; and the step's attention (every layer's SDPA
      for the CFG pair at KV length `--context`) in float32 and bf16. Medians over `--rounds`.

    python benchmarks/t3_precision.py [--checkpoint DIR] [--steps 300] [--rounds 5] [--stepwise] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from faster_chatterbox.bench import _machine
from faster_chatterbox.checkpoint import load_weights, read_safetensors, skip_weight_init
from faster_chatterbox.config import ChatterboxConfig
from faster_chatterbox.devices import fbgemm_fp16
from faster_chatterbox.engine.quantize import (Int8Linear, int8_mm_dequant, int8_mm_dynamic, int8_mm_packed,
                                               quantize_int8_, reduce_precision_, to_bf16_)
from faster_chatterbox.engine.sampling import SamplingParams, cfg_combine, next_token_probs, sample
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.t3 import T3, T3Cond
from faster_chatterbox.random_checkpoint import _randomize_
from faster_chatterbox.settings import PACKED_BF16_PAST_ROWS
from faster_chatterbox.tts import Conditionals


def _int8_with_int8_head(t3: T3) -> T3:
    quantize_int8_(t3.tfmr, scale_dtype=torch.bfloat16)
    t3.speech_head = Int8Linear.from_linear(t3.speech_head, torch.bfloat16)
    return to_bf16_(t3)


class _RowsInInt8Linear(Int8Linear):
    """Int8Linear always taking `int8_mm_dynamic`, as it does for batches of 5 to DYNAMIC_MAX_ROWS rows:
    the teacher-forced forward (hundreds of rows) then rounds every position's row as a decode step would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_mm_dynamic(x.reshape(-1, self.in_features), self.weight, self.scales.to(x.dtype))
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def _rows_in_int8(t3: T3) -> T3:
    _fp32_kv("int8")(t3)
    for module in t3.tfmr.modules():
        if isinstance(module, Int8Linear):
            module.__class__ = _RowsInInt8Linear
    return t3


# name -> converter of a float32 T3, in place
def _fp32_kv(precision: str, **options):
    """`precision` (and `reduce_precision_`'s options) with a float32 KV cache and attention: what the presets
    run on CPU."""
    def convert(t3: T3) -> T3:
        reduce_precision_(t3, precision, **options)
        t3.tfmr.kv_dtype = torch.float32
        return t3
    return convert


# bf16 weights on FBGEMM's fp16 GEMM (`fast` on x86 CPUs without AMX): every row count packed (bf16 emulated),
# or inputs of more than PACKED_BF16_PAST_ROWS rows on oneDNN's bf16 GEMM (native bf16)
PACKED = {"packed fp16, fp32 KV (fast, emulated bf16)": _fp32_kv("bf16", packed_fp16=True),
          f"packed fp16 to {PACKED_BF16_PAST_ROWS} rows, fp32 KV (fast, native bf16 without AMX)":
              _fp32_kv("bf16", packed_fp16=True, packed_bf16_past_rows=PACKED_BF16_PAST_ROWS)}
VARIANTS = {
    "fp32": lambda t3: reduce_precision_(t3, "fp32"),
    "bf16": lambda t3: reduce_precision_(t3, "bf16"),
    "bf16, fp32 KV (fast)": _fp32_kv("bf16"),
    "int8, fp32 KV (fastest)": _fp32_kv("int8"),
    "int8 rows in int8, fp32 KV (fastest, 5-64 rows)": _rows_in_int8,
    "bf16, bf16 logits": lambda t3: to_bf16_(t3, fp32_logits=False),
    "int8": lambda t3: reduce_precision_(t3, "int8"),
    "int8, int8 head": _int8_with_int8_head,
    **(PACKED if fbgemm_fp16(torch.device("cpu")) else {}),
}


def load_t3(checkpoint: Path | None, seed: int) -> tuple[T3, T3Cond | None]:
    """The float32 T3 of `checkpoint` and its built-in voice, or a random full-size T3 (and no voice)."""
    if checkpoint is None:
        with skip_weight_init():
            t3 = T3()
        _randomize_(t3, torch.Generator().manual_seed(seed))
        return t3.eval(), None
    config_path = checkpoint / "config.json"
    config = ChatterboxConfig.load(config_path) if config_path.is_file() else ChatterboxConfig()
    with skip_weight_init():
        t3 = T3(config.t3)
    load_weights(t3, read_safetensors(checkpoint / "t3_cfg.safetensors"), checkpoint / "t3_cfg.safetensors")
    conds = checkpoint / "conds.pt"
    return t3.eval(), Conditionals.load(conds).t3 if conds.is_file() else None


def random_inputs(t3: T3, seed: int, text_len: int = 60) -> tuple[T3Cond, torch.Tensor]:
    """A random voice (speaker embedding, 150 prompt tokens) and text (L,) wrapped in start/stop tokens."""
    cfg, g = t3.cfg, torch.Generator().manual_seed(seed)
    cond = T3Cond(speaker_emb=torch.randn(1, cfg.speaker_embed_size, generator=g),
                  cond_prompt_speech_tokens=torch.randint(0, cfg.start_speech_token, (1, cfg.speech_cond_prompt_len),
                                                          generator=g),
                  emotion_adv=0.5 * torch.ones(1, 1, 1))
    text = torch.randint(7, 100, (text_len,), generator=g)
    text[0], text[-1] = cfg.start_text_token, cfg.stop_text_token
    return cond, text


def scale_head_(t3: T3, factor: float) -> None:
    """Multiply the speech logits by `factor` (a power of two, so the scaled weights are exact in any dtype)."""
    if factor <= 0 or not math.log2(factor).is_integer():
        raise ValueError(f"--head-scale must be a power of two, got {factor}")
    head = t3.speech_head
    with torch.no_grad():
        (head.scales if isinstance(head, Int8Linear) else head.weight).mul_(factor)


# ---- (a) speed ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def time_steps(t3: T3, batch: int, context: int, n: int, sync) -> list[float]:
    """Milliseconds of each of `n` decode steps at KV positions context, context + 1, ... (batch rows)."""
    cfg, device = t3.cfg, t3.speech_emb.weight.device
    params = SamplingParams(cfg_weight=0.5 if batch == 2 else 0.0)
    cache = t3.tfmr.new_cache(batch, context + n)
    for layer in cache.layers:  # the slots before `context` stand for a prompt: any finite keys and values
        layer.k.normal_()
        layer.v.normal_()
    cache_pos = torch.arange(context + n, device=device)
    seen = torch.zeros(1, cfg.speech_tokens_dict_size, dtype=torch.bool, device=device)
    h = torch.randn(batch, cfg.llama.dim, device=device).to(t3.speech_emb.weight.dtype)  # (R, D)
    times = []
    for i in range(n):
        sync()
        start = time.perf_counter()
        token = sample(next_token_probs(t3.speech_head(h).float(), seen, params))  # (1, 1)
        seen.scatter_(1, token, True)
        x = t3.speech_embeds(token, cache_pos[i + 1 : i + 2]).expand(batch, -1, -1)  # (R, 1, D)
        pos = context + i
        h = t3.tfmr(x, cache_pos[pos : pos + 1], cache, kv_len=pos + 1)[:, -1]
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_speed(models: dict[str, T3], rounds: int, steps: int, context: int, sync) -> dict:
    times = {(name, b): [] for name in models for b in (2, 1)}
    for r in range(rounds):
        progress(f"speed, round {r + 1} of {rounds}")
        for (name, batch), acc in times.items():
            acc.extend(time_steps(models[name], batch, context, steps + 1, sync)[1:])  # first step: warm-up
    return {name: {f"ms_per_step_b{b}": statistics.median(times[name, b]) for b in (2, 1)} for name in models}


# ---- (c) int8 kernels -------------------------------------------------------------------------------------

@torch.inference_mode()
def measure_kernels(bf16: T3, int8: T3, rounds: int, row_counts=(1, 2, 4, 8, 16, 32, 64)) -> dict:
    """ms per pass over the backbone's Linears (bf16 weights / the int8 model's) with M activation rows."""
    linears = [m for m in bf16.tfmr.modules() if type(m) is nn.Linear]
    quantized = [m for m in int8.tfmr.modules() if isinstance(m, Int8Linear)]
    kernels = {
        "bf16 F.linear": lambda x, i: F.linear(x, linears[i].weight),
        "int8 packed": lambda x, i: int8_mm_packed(x, quantized[i].weight, quantized[i].scales),
        "int8 rows in int8": lambda x, i: int8_mm_dynamic(x, quantized[i].weight, quantized[i].scales),
        "int8 dequant": lambda x, i: int8_mm_dequant(x, quantized[i].weight, quantized[i].scales),
    }
    result = {}
    progress("int8 kernels")
    for rows in row_counts:
        xs = {m.in_features: torch.randn(rows, m.in_features, dtype=torch.bfloat16) for m in quantized}
        times = {name: [] for name in kernels}
        for _ in range(rounds):
            for name, kernel in kernels.items():
                start = time.perf_counter()
                for i, m in enumerate(quantized):
                    kernel(xs[m.in_features], i)
                times[name].append((time.perf_counter() - start) * 1e3)
        result[f"rows_{rows}"] = {name: statistics.median(t) for name, t in times.items()}
    return result


@torch.inference_mode()
def measure_attention(t3: T3, context: int, rounds: int) -> dict:
    """ms of one decode step's attention: SDPA of every layer for the CFG pair over `context` cached keys."""
    cfg = t3.cfg.llama
    mask = torch.ones(1, context, dtype=torch.bool)
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, cfg.n_heads, 1, cfg.head_dim, dtype=dtype)
        k, v = (torch.randn(2, cfg.n_kv_heads, context, cfg.head_dim, dtype=dtype) for _ in range(2))
        times = []
        for _ in range(rounds * 10):
            start = time.perf_counter()
            for _ in range(cfg.n_layers):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=cfg.n_heads != cfg.n_kv_heads)
            times.append((time.perf_counter() - start) * 1e3)
        result[str(dtype).removeprefix("torch.")] = statistics.median(times)
    return result


# ---- (b) quality -------------------------------------------------------------------------------------------

@torch.inference_mode()
def teacher_forced_logits(t3: T3, cond: T3Cond, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(2, S, V) float32 logits before each of the S tokens, conditional and unconditional rows."""
    return t3(cond, text, tokens, cfg=True)[:, :-1].float()


@torch.inference_mode()
def stepwise_logits(t3: T3, cond: T3Cond, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`teacher_forced_logits` as a decode computes them: the prefix (BOS last) in one forward, then each of
    tokens[:-1] in a forward of its own (2 rows), through the KV cache."""
    device = t3.speech_emb.weight.device
    x = t3.decode_prefix(cond, text, cfg=True)  # (2, P, D)
    rows, prefill_len = x.shape[:2]
    cache = t3.tfmr.new_cache(rows, prefill_len + len(tokens))
    cache_pos = torch.arange(prefill_len + len(tokens), device=device)
    h = t3.tfmr(x, cache_pos[:prefill_len], cache, kv_len=prefill_len)[:, -1]  # (2, D)
    logits = [t3.speech_head(h).float()]
    for i, token in enumerate(tokens[:-1]):
        x = t3.speech_embeds(token.view(1, 1), cache_pos[i + 1 : i + 2]).expand(rows, -1, -1)  # (2, 1, D)
        pos = prefill_len + i
        h = t3.tfmr(x, cache_pos[pos : pos + 1], cache, kv_len=pos + 1)[:, -1]
        logits.append(t3.speech_head(h).float())
    return torch.stack(logits, dim=1)  # (2, S, V)


def compare(ref: torch.Tensor, low: torch.Tensor, tokens: torch.Tensor, start_token: int,
            params: SamplingParams) -> dict:
    """Step-by-step distances between the sampling distributions of logits `low` and `ref` (2, S, V)."""
    smooth = replace(params, min_p=0.0)
    seen = torch.zeros(1, ref.shape[-1], dtype=torch.bool)
    seen[0, start_token] = True
    rows = []
    for i in range(ref.shape[1]):
        p, q = (next_token_probs(lg[:, i], seen, params) for lg in (ref, low))  # (1, V) final distributions
        p_s, q_s = (next_token_probs(lg[:, i], seen, smooth) for lg in (ref, low))  # before min_p
        top_ref, top_low = (cfg_combine(lg[:, i], params.cfg_weight).argmax() for lg in (ref, low))
        rows.append({
            "kl": float((torch.xlogy(p_s, p_s) - torch.xlogy(p_s, q_s)).sum()),
            "tv": float(0.5 * (p - q).abs().sum()),
            "cut": float(((p > 0) != (q > 0)).any()),
            "top1": float(top_ref == top_low),
            "entropy_fp32": float(-torch.xlogy(p, p).sum()),
        })
        seen[0, tokens[i]] = True
    out = {}
    for key in ("kl", "tv"):
        values = [r[key] for r in rows]
        out[f"{key}_mean"], out[f"{key}_max"] = statistics.fmean(values), max(values)
    for key in ("cut", "top1", "entropy_fp32"):
        out[key] = statistics.fmean(r[key] for r in rows)
    return out


def measure_quality(models: dict[str, T3], cond: T3Cond, text: torch.Tensor, steps: int, seed: int,
                    stepwise: bool = False) -> dict:
    fp32 = models["fp32"]
    logits_of = stepwise_logits if stepwise else teacher_forced_logits
    progress(f"quality: sampling {steps} tokens with fp32")
    torch.manual_seed(seed)
    tokens = generate_speech_tokens(fp32, cond, text, max_new_tokens=steps)  # (S,)
    params = SamplingParams()
    ref = logits_of(fp32, cond, text, tokens)
    result = {"tokens": len(tokens), "stepwise": stepwise}
    for name, t3 in models.items():
        progress(f"quality: teacher-forcing {name}")
        low = logits_of(t3, cond, text, tokens)
        result[name] = compare(ref, low, tokens, fp32.cfg.start_speech_token, params)
    return result


# ---- report ------------------------------------------------------------------------------------------------

def print_tables(result: dict) -> None:
    speed = result["speed"]
    print(f"\ndecode step, ms (median; KV length ~{result['args']['context']}; "
          f"{result['machine']['torch_threads']} threads)\n")
    print("| variant | CFG pair (batch 2) | batch 1 | speed-up b2 vs fp32 |")
    print("|---|---:|---:|---:|")
    for name, s in speed.items():
        print(f"| {name} | {s['ms_per_step_b2']:.1f} | {s['ms_per_step_b1']:.1f} | "
              f"{speed['fp32']['ms_per_step_b2'] / s['ms_per_step_b2']:.2f}x |")
    if "kernels" in result:
        kernels = result["kernels"]
        names = list(next(iter(kernels.values())))
        print("\nLinear kernels: ms per pass over the backbone's Linears with M bf16 rows (median)\n")
        print("| M | " + " | ".join(names) + " |")
        print("|---:|" + "---:|" * len(names))
        for rows, t in kernels.items():
            print(f"| {rows.removeprefix('rows_')} | " + " | ".join(f"{t[n]:.1f}" for n in names) + " |")
    if "attention_ms" in result:
        print(f"\nattention of one decode step (all layers, CFG pair, KV length {result['args']['context']}), ms: "
              + ", ".join(f"{dtype} {ms:.1f}" for dtype, ms in result["attention_ms"].items()))
    for label, q in result["quality"].items():
        entropy = q["fp32"]["entropy_fp32"]
        how = "one position per forward" if q.get("stepwise") else "one forward"
        print(f"\nquality vs fp32, {label}: {q['tokens']} teacher-forced steps ({how}), fp32 entropy "
              f"{entropy:.2f} nats (final distribution)\n")
        print("| variant | KL mean | KL max | TV mean | TV max | min_p cut differs | top-1 agree |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in speed:
            m = q[name]
            print(f"| {name} | {m['kl_mean']:.2e} | {m['kl_max']:.2e} | {m['tv_mean']:.4f} | {m['tv_max']:.4f} | "
                  f"{m['cut']:.1%} | {m['top1']:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: random full-size T3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=300,
                    help="teacher-forced steps for the quality figures (0: skip them)")
    ap.add_argument("--stepwise", action="store_true",
                    help="teacher-force one position per forward, as a decode runs (see (b))")
    ap.add_argument("--head-scale", type=float, default=4.0, help="speech head factor of the peaky model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timed-steps", type=int, default=8, help="timed decode steps per variant and round")
    ap.add_argument("--context", type=int, default=300, help="KV length at the timed steps")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["fp32"] + [v for v in args.variants if v != "fp32"]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    fp32, cond = load_t3(args.checkpoint, args.seed)
    random_cond, text = random_inputs(fp32, args.seed)
    cond = (cond or random_cond).to(device)
    models = {name: VARIANTS[name](copy.deepcopy(fp32) if name != "fp32" else fp32).to(device) for name in variants}

    result = {"benchmark": "t3_precision",
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": _machine(args.device), "checkpoint": str(args.checkpoint or "random")}
    result["speed"] = measure_speed(models, args.rounds, args.timed_steps, args.context, sync)
    if device.type == "cpu" and {"bf16", "int8"} <= models.keys():
        result["kernels"] = measure_kernels(models["bf16"], models["int8"], args.rounds)
        result["attention_ms"] = measure_attention(fp32, args.context, args.rounds)
    result["quality"] = {}
    if args.steps:
        result["quality"]["model as loaded"] = measure_quality(models, cond, text, args.steps, args.seed, args.stepwise)
        for t3 in models.values():
            scale_head_(t3, args.head_scale)
        label = f"peaky (head x{args.head_scale:g})"
        result["quality"][label] = measure_quality(models, cond, text, args.steps, args.seed, args.stepwise)
    print_tables(result)
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
