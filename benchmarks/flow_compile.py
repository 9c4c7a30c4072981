"""The flow estimator compiled for a static length bucket (CausalConditionalCFM.compile_estimator) against
the eager one, on the same shapes, in one process (A/B alternated per round).

Full-size CFM decoder, random weights, in `--dtype` (bf16 by default: the fast preset's S3Gen on CPUs with
native bf16; float32 where bf16 is emulated, e.g. AVX2 CPUs, as settings.py resolves it); the fast preset's
solve (8 AB2 steps on the sway grid, CFG fused: batch 2) over `--frames` mel frames (default 648: a 10 s prompt and 74
tokens, section 1's job). The compiled side pads to a multiple of `--bucket` frames. The first compiled
solve (compilation) is timed apart. The solve's floating-point work is counted once (torch's FlopCounterMode
over the eager solve: matmuls, convolutions, attention), so each variant's rate can be read against the CPU's
peak.

    python benchmarks/flow_compile.py [--threads 2] [--frames 648] [--bucket 64] [--rounds 3]
                                      [--variants default freezing autotune] [--dtype bfloat16|float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils import flop_counter

from faster_chatterbox.models.flow import CausalConditionalCFM
from faster_chatterbox.models.cfm_estimator import CFMEstimatorConfig
from faster_chatterbox.random_checkpoint import _randomize_


# the CPU's flash attention kernel is not in torch's FLOP table: it does the product the others do
@flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


SOLVE = dict(n_timesteps=8, solver="ab2", schedule="sway", sway_coef=-0.6)
# inductor's options per compiled variant: its defaults; the weights folded in as constants (prepacked for
# oneDNN); and those with the matmuls autotuned against inductor's C++ AMX GEMMs
VARIANTS = {"default": None, "freezing": {"freezing": True},
            "autotune": {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=648)
    ap.add_argument("--bucket", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default"],
                    help="compiled variants, each against eager in the same rounds")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = ap.parse_args()
    dtype, tag = getattr(torch, args.dtype), {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]
    torch.set_num_threads(args.threads)
    eager = CausalConditionalCFM(CFMEstimatorConfig(), cfg_rate=0.7).eval()
    _randomize_(eager, torch.Generator().manual_seed(0))
    eager = eager.to(dtype)
    compiled = {}
    for variant in args.variants:
        model = CausalConditionalCFM(CFMEstimatorConfig(), cfg_rate=0.7).eval().to(dtype)
        model.load_state_dict(eager.state_dict())
        model.compile_estimator(args.bucket, options=VARIANTS[variant])
        compiled[f"compiled {tag} ({variant}), bucket {args.bucket}"] = model
    g = torch.Generator().manual_seed(1)
    T = args.frames
    inputs = (torch.randn(1, 80, T, generator=g), torch.randn(1, 80, T, generator=g).to(dtype),
              torch.ones(1, 1, T, dtype=dtype), torch.randn(1, 80, generator=g).to(dtype),
              torch.randn(1, 80, T, generator=g).to(dtype))

    def run(model) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(*inputs, **SOLVE)
        return time.perf_counter() - start, out

    with flop_counter.FlopCounterMode(display=False) as counter:
        _, ref = run(eager)
    gflop = counter.get_total_flops() / 1e9
    print(f"one solve: {gflop:.0f} GFLOP (matmuls, convolutions, attention)", file=sys.stderr, flush=True)
    firsts, diffs = {}, {}
    for name, model in compiled.items():
        firsts[name], out = run(model)
        diffs[name] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        print(f"{name}: first solve (compiling) {firsts[name]:.1f} s", file=sys.stderr, flush=True)
    eager_name = f"eager {tag}"
    models = {eager_name: eager, **compiled}
    times = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in models.items():
            dt, _ = run(model)
            times[name].append(dt)
            print(f"round {r + 1}: {name} {dt:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(times[eager_name])
    print(f"one solve: {gflop:.0f} GFLOP")
    print(f"| variant | s per solve (median of {args.rounds}) | GFLOP/s | rounds | vs eager | compile s | "
          "rel. diff to eager |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, t in times.items():
        extra = f"{firsts[name]:.0f} | {diffs[name]:.1e}" if name in compiled else " | "
        median = statistics.median(t)
        print(f"| {name} | {median:.2f} | {gflop / median:.0f} | {[round(x, 2) for x in t]} | "
              f"{base / median:.2f}x | {extra} |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"frames": T, "bucket": args.bucket, "threads": args.threads, "dtype": args.dtype,
                                "gflop": gflop, "first_s": firsts,
                                "times": times, "rel_diff": diffs}) + "\n")


if __name__ == "__main__":
    main()
