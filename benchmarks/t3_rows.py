"""The reduced-precision T3 decode step against the number of rows: bf16 (`fast`) and int8 (`fastest`), each
with a float32 or a bf16 KV cache, int8 with the kernel rule of the previous commit and this one, and on x86
the bf16 weights packed for FBGEMM's fp16 GEMM (`pack_fp16_`), side by side in one process.

Full-size T3, random weights. R requests with their CFG pairs
(2 R rows) decode together in the continuous batch (`DecodeBatch`, multinomial sampling: the default step),
R = --requests; each round times every variant in turn (a fresh batch, one check of warm-up, then --steps
steps); medians over rounds. The int8 rules (engine/quantize.Int8Linear on CPU, bf16 rows):
  weight-only  the previous commit's: the packed weight-only kernel up to 8 rows, dequantize-then-matmul beyond
  rows in int8 packed up to PACKED_MAX_ROWS (4), rows rounded to int8 and multiplied in integers
               (`int8_mm_dynamic`) up to DYNAMIC_MAX_ROWS (64), dequantizing beyond

    python benchmarks/t3_rows.py [--requests 1 2 3 4 8] [--rounds 3] [--steps 16] [--threads 2] [--json F]
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
from t3_precision import load_t3, progress, random_inputs  # noqa: E402

from faster_chatterbox.devices import fbgemm_fp16  # noqa: E402
from faster_chatterbox.engine import quantize  # noqa: E402
from faster_chatterbox.engine.batch_decode import DecodeBatch, DecodeRequest  # noqa: E402
from faster_chatterbox.engine.quantize import reduce_precision_  # noqa: E402

RULES = {"weight-only (before)": (8, 8), "rows in int8": (quantize.PACKED_MAX_ROWS, quantize.DYNAMIC_MAX_ROWS)}


@torch.inference_mode()
def ms_per_step(t3, requests: list[DecodeRequest], steps: int) -> float:
    batch = DecodeBatch(t3, 4, "multinomial")
    batch.admit(list(range(len(requests))), requests)
    batch.advance()  # warm-up: the first check
    start, done = time.perf_counter(), 0
    while done < steps:
        batch.advance()
        done += 4
    return (time.perf_counter() - start) * 1e3 / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fp32, _ = load_t3(None, 0)
    models = {p: reduce_precision_(copy.deepcopy(fp32), p) for p in ("int8", "bf16")}
    if fbgemm_fp16(torch.device("cpu")):  # x86: the bf16 weights on FBGEMM's fp16 GEMM, activations float32
        models["bf16 packed"] = reduce_precision_(copy.deepcopy(fp32), "bf16", packed_fp16=True)
    inputs = [random_inputs(fp32, 10 + k, text_len=60 + 5 * k) for k in range(max(args.requests))]
    del fp32

    def requests(n: int) -> list[DecodeRequest]:
        return [DecodeRequest(cond, text, max_new_tokens=args.steps + 12, generator=torch.Generator().manual_seed(k))
                for k, (cond, text) in enumerate(inputs[:n])]

    # (name, precision, KV dtype, int8 rule)
    variants = [("bf16, fp32 KV", "bf16", torch.float32, None), ("bf16, bf16 KV", "bf16", torch.bfloat16, None)]
    variants += [("bf16 packed fp16, fp32 KV", "bf16 packed", torch.float32, None)] if "bf16 packed" in models else []
    variants += [(f"int8 {rule}, {kv} KV", "int8", dtype, limits) for rule, limits in RULES.items()
                 for kv, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                 if not (rule.startswith("weight-only") and kv == "bf16")]
    times = {(name, n): [] for name, *_ in variants for n in args.requests}
    for r in range(args.rounds):
        for n in args.requests:
            for name, precision, kv_dtype, limits in variants:
                progress(f"round {r + 1}/{args.rounds}: {n} requests, {name}")
                if limits:
                    quantize.PACKED_MAX_ROWS, quantize.DYNAMIC_MAX_ROWS = limits
                models[precision].tfmr.kv_dtype = kv_dtype
                times[name, n].append(ms_per_step(models[precision], requests(n), args.steps))
    quantize.PACKED_MAX_ROWS, quantize.DYNAMIC_MAX_ROWS = RULES["rows in int8"]
    medians = {(name, n): statistics.median(t) for (name, n), t in times.items()}
    names = [name for name, *_ in variants]
    print(f"\nms per decode step (median of {args.rounds} rounds, {args.threads} threads)\n")
    print("| requests (rows) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for n in args.requests:
        print(f"| {n} ({2 * n}) | " + " | ".join(f"{medians[name, n]:.1f}" for name in names) + " |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                                "ms_per_step": {f"{name} | {n}": t for (name, n), t in times.items()}}) + "\n")


if __name__ == "__main__":
    main()
