"""The T3 decode step of the continuous batch: the dynamic batch (resized cache, a multinomial per row:
the previous implementation) against the keyed sampler, the static cache's eager step and its compiled one,
and the reduced-precision T3 with its q/k/v and gate/up projections separate (`reduce_precision_(...,
fuse=False)`, as before section 37) against the fused one every other variant runs.

Full-size T3, random weights (or `--checkpoint DIR`), the preset's weights (`--precision bf16`: fast,
`int8`: fastest; float32 KV cache on CPU as the presets run), one request with its CFG pair whose prefix
puts the KV length at ~`--context`. Each round runs every variant in turn (A/B alternated in one process):
a fresh batch, the request admitted, one check of warm-up, then `--steps` timed steps; medians over rounds.
The compiled variant's first step (compilation) is timed apart.

    python benchmarks/t3_step.py [--threads 2] [--precision bf16 [--packed-fp16]] [--rounds 3] [--steps 16] [--inductor]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from t3_precision import _fp32_kv, load_t3, progress, random_inputs  # noqa: E402

from faster_chatterbox.engine.batch_decode import DecodeBatch, DecodeRequest  # noqa: E402
from faster_chatterbox.engine.quantize import reduce_precision_  # noqa: E402
from faster_chatterbox.engine.static_batch import StaticDecodeBatch  # noqa: E402


# inductor's weights folded in as constants (prepacked for oneDNN) and matmuls autotuned against its C++ GEMMs
AUTOTUNE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


# the previous implementation: the dynamic batch on the T3 of reduce_precision_(..., fuse=False)
BEFORE = "dynamic, multinomial, separate projections (before)"


def variants(inductor: bool) -> dict:
    v = {BEFORE: lambda t3: DecodeBatch(t3, 4, "multinomial"),
         "dynamic, multinomial (fast)": lambda t3: DecodeBatch(t3, 4, "multinomial"),
         "dynamic, keyed": lambda t3: DecodeBatch(t3, 4, "keyed"),
         "static, eager": lambda t3: StaticDecodeBatch(t3, 4, "static")}
    if inductor:
        v["static, inductor"] = lambda t3: StaticDecodeBatch(t3, 4, "inductor")
        v["static, inductor (freezing, max_autotune)"] = lambda t3: StaticDecodeBatch(t3, 4, "inductor", AUTOTUNE)
    if torch.cuda.is_available():
        v["static, cuda_graph"] = lambda t3: StaticDecodeBatch(t3, 4, "cuda_graph")
    return v


@torch.inference_mode()
def time_variant(t3, make, request: DecodeRequest, steps: int, sync) -> tuple[float, float, list[int]]:
    """(first check's seconds, ms per step after it, tokens)."""
    batch = make(t3)
    batch.admit([0], [request])
    sync()
    start = time.perf_counter()
    batch.advance()  # tokens 1-3: warm-up (and compilation)
    sync()
    first = time.perf_counter() - start
    start, done, tokens = time.perf_counter(), 0, None
    while done < steps:
        (_, tokens, _), = batch.advance()
        done += 4
    sync()
    return first, (time.perf_counter() - start) * 1e3 / done, list(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8"])
    ap.add_argument("--packed-fp16", action="store_true",
                    help="bf16 weights on FBGEMM's fp16 GEMM, float32 activations (engine.quantize.pack_fp16_)")
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--inductor", action="store_true", help="include the inductor-compiled step (slow to compile)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loaded, _ = load_t3(args.checkpoint, 0)

    def reduced(fuse: bool):
        t3 = copy.deepcopy(loaded)
        if args.packed_fp16:  # the float32 KV cache and activations are pack_fp16_'s own
            return reduce_precision_(t3, "bf16", packed_fp16=True, fuse=fuse).to(device)
        if device.type == "cpu" and args.precision != "fp32":
            t3 = _fp32_kv(args.precision, fuse=fuse)(t3)
        return t3.to(device)

    t3 = reduced(fuse=True)
    models = {BEFORE: reduced(fuse=False) if args.precision != "fp32" else t3}  # fp32 is never fused
    del loaded
    cond, text = random_inputs(t3, 1, text_len=args.context - 40)  # 34 conditioning + text + 2 BOS
    budget = 4 + args.steps + 4

    def request():
        return DecodeRequest(cond.to(device), text.to(device), max_new_tokens=budget,
                             generator=torch.Generator(device).manual_seed(7))

    runs = variants(args.inductor)
    times = {name: [] for name in runs}
    firsts, tokens = {name: [] for name in runs}, {}
    for r in range(args.rounds):
        for name, make in runs.items():
            progress(f"round {r + 1}/{args.rounds}: {name}")
            first, ms, toks = time_variant(models.get(name, t3), make, request(), args.steps, sync)
            firsts[name].append(first)
            times[name].append(ms)
            tokens[name] = toks
    base = statistics.median(times[BEFORE])
    result = {"device": str(device), "threads": args.threads, "precision": args.precision, "context": args.context,
              "packed_fp16": args.packed_fp16,
              "variants": {name: {"ms_per_step": statistics.median(t), "all_ms": [round(x, 2) for x in t],
                                  "first_check_s": [round(x, 2) for x in firsts[name]],
                                  "speed_up": base / statistics.median(t)} for name, t in times.items()},
              # which keyed variants drew the dynamic keyed batch's tokens (bf16: a compiled graph's reordered
              # sums may round a logit differently; in float32 they agree: tests/test_static_batch.py)
              "same_tokens_as_dynamic_keyed": {n: tokens[n] == tokens["dynamic, keyed"] for n in tokens
                                               if "static" in n},
              # the fused projections sum in another order: in reduced precision a token may differ
              "fused_same_tokens_as_separate": tokens["dynamic, multinomial (fast)"] == tokens[BEFORE]}
    print(f"| variant | ms/step (median of {args.rounds}) | rounds | first check s | vs before |")
    print("|---|---:|---|---|---:|")
    for name, v in result["variants"].items():
        print(f"| {name} | {v['ms_per_step']:.1f} | {v['all_ms']} | {v['first_check_s']} | {v['speed_up']:.2f}x |")
    print(f"same tokens as the dynamic keyed batch: {result['same_tokens_as_dynamic_keyed']}")
    print(f"fused projections, same tokens as separate: {result['fused_same_tokens_as_separate']}")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
