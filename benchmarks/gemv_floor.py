"""What one T3 decode step's matmuls can cost on this CPU: the kernels' bandwidth against the memory's.

A decode step multiplies a few rows (1 for Turbo, 2 for a CFG pair, up to 16 in a batch) by every weight of
the backbone once, so its floor is the weights' bytes over the memory bandwidth. This measures, on stacks of
distinct weights large enough to miss the caches (the Llama T3's 30 layers, 503 M parameters, or GPT-2
medium's 302 M with --gpt2):
  stream      a sum over 1 GB of float32 (and 0.5 GB of bf16): the memory's read bandwidth
  linear      F.linear over the stack, float32 and bf16, at 1 / 2 / 4 / 8 / 16 rows (oneDNN / MKL)
  int8        the three int8 kernels `fastest` chooses between by the number of rows (engine/quantize.py):
              packed weight-only (`_weight_int8pack_mm`, bf16 rows), rows quantized to int8 too (per row,
              `_int_mm`), and dequantize-then-bf16-matmul; at 1 to 16 rows and at prefill-like 32 to 256
  prefill     F.linear at 32 / 64 / 400 rows (a prefill's) in float32 and bf16, and `Bf16Linear` (bf16 weights
              multiplied in float32 past 16 rows: what CPUs that emulate bf16 run, settings.py) at 16 to 400
              rows; --prefill-rounds timings each
  fp16 packed the bf16 stack as `PackedFp16Linear` (FBGEMM's fp16 GEMM, float32 rows: what x86 CPUs that emulate
              bf16 run) at 1 to 16 rows and at 32 / 64 / 400; skipped where FBGEMM does not run
  head        the float32 speech head (Turbo's 6563 x 1024), F.linear against `Float32Linear` (the weight as
              the left operand up to 16 rows), at 1 / 4 / 8 rows
  inductor    the bf16 stack compiled with freezing + max_autotune (inductor's C++ AMX GEMM templates),
              --inductor (its compilation takes a minute or more)
Each figure: the median of --rounds timings of one pass, in ms, and the GB/s of weights it reads.

    python benchmarks/gemv_floor.py [--threads 2] [--rounds 5] [--prefill-rounds 2] [--gpt2] [--inductor] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from faster_chatterbox.devices import fbgemm_fp16, native_bf16
from faster_chatterbox.engine.quantize import (
    Bf16Linear,
    Float32Linear,
    PackedFp16Linear,
    int8_mm_dequant,
    int8_mm_dynamic,
    int8_mm_packed,
)

LLAMA = [(3072, 1024), (1024, 1024), (8192, 1024), (1024, 4096)] * 30  # q/k/v fused, o, gate/up, down
GPT2 = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)] * 24  # c_attn, c_proj, c_fc, mlp c_proj


def timed(fn, rounds: int) -> float:
    """Median ms of `rounds` calls of fn after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class Stack(nn.Module):
    """The layers' Linears one after another, each fed the same rows (the bytes read are what matter)."""

    def __init__(self, shapes, dtype):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=False, dtype=dtype) for o, i in shapes)

    def forward(self, x: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [layer(x[layer.in_features]) for layer in self.layers]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gpt2", action="store_true", help="GPT-2 medium's layers (Turbo) instead of the Llama's")
    ap.add_argument("--inductor", action="store_true")
    ap.add_argument("--prefill-rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = GPT2 if args.gpt2 else LLAMA
    params = sum(o * i for o, i in shapes)
    rows_list = (1, 2, 4, 8, 16)
    out: dict[str, float] = {}

    def record(name: str, ms: float, nbytes: int) -> None:
        out[name] = round(ms, 2)
        print(f"{name:38s} {ms:8.1f} ms  {nbytes / ms / 1e6:6.1f} GB/s", flush=True)

    big = torch.randn(256 * 1024 * 1024)  # 1 GB
    record("stream float32 (1 GB)", timed(big.sum, args.rounds), big.numel() * 4)
    half = big[: big.numel() // 2].bfloat16()
    record("stream bf16 (0.5 GB)", timed(half.sum, args.rounds), half.numel() * 2)
    del big, half
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            stack = Stack(shapes, dtype).eval()
            for rows in rows_list + (32, 64, 400):
                x = {n: torch.randn(rows, n, dtype=dtype) for n in (1024, 4096)}
                record(f"linear {str(dtype)[6:]} {rows} rows",
                       timed(lambda: stack(x), args.rounds if rows <= 16 else args.prefill_rounds),
                       params * dtype.itemsize)
            if dtype == torch.bfloat16:
                upcast = Stack([], dtype)
                upcast.layers = nn.ModuleList(Bf16Linear.from_linear(layer, upcast_rows=16) for layer in stack.layers)
                for rows in (16, 32, 64, 400):
                    x = {n: torch.randn(rows, n, dtype=dtype) for n in (1024, 4096)}
                    record(f"Bf16Linear (upcast past 16) {rows} rows", timed(lambda: upcast(x), args.prefill_rounds),
                           params * dtype.itemsize)
                del upcast
                if fbgemm_fp16(torch.device("cpu")):
                    packed = Stack([], dtype)
                    packed.layers = nn.ModuleList(PackedFp16Linear.from_linear(layer) for layer in stack.layers)
                    for rows in rows_list + (32, 64, 400):
                        x = {n: torch.randn(rows, n, dtype=dtype) for n in (1024, 4096)}
                        record(f"PackedFp16Linear {rows} rows",
                               timed(lambda: packed(x), args.rounds if rows <= 16 else args.prefill_rounds),
                               params * dtype.itemsize)
                    del packed
            if dtype == torch.bfloat16:
                weights = [(torch.randint(-127, 128, l.weight.shape, dtype=torch.int8),
                            torch.rand(l.out_features, dtype=dtype) / 100) for l in stack.layers]
                int8_kernels = {"packed": int8_mm_packed, "rows in int8": int8_mm_dynamic, "dequant": int8_mm_dequant}
                for rows in rows_list + (32, 64, 128, 256):
                    x = {n: torch.randn(rows, n, dtype=dtype) for n in (1024, 4096)}
                    for name, kernel in int8_kernels.items():
                        if (name == "packed" and rows > 16) or (name == "dequant" and rows < 8):
                            continue  # far from where Int8Linear would pick it, and slow
                        record(f"int8 {name}, bf16 {rows} rows", timed(lambda: [kernel(x[w.shape[1]], w, s)
                                                                                 for w, s in weights], args.rounds),
                               params)
                del weights
                if args.inductor:
                    start = time.perf_counter()
                    compiled = torch.compile(stack, options={"freezing": True, "max_autotune": True,
                                                             "max_autotune_gemm_backends": "CPP,ATEN"})
                    for rows in (1, 2, 8):
                        x = {n: torch.randn(rows, n, dtype=dtype) for n in (1024, 4096)}
                        compiled(x)
                        record(f"inductor bf16 {rows} rows", timed(lambda: compiled(x), args.rounds),
                               params * dtype.itemsize)
                    print(f"(inductor: compiled and autotuned in {time.perf_counter() - start:.0f} s)")
            del stack
        heads = [nn.Linear(1024, 6563, bias=False) for _ in range(8)]  # 8 distinct heads: 215 MB, past the caches
        ours = [Float32Linear.from_linear(head) for head in heads]
        for rows in (1, 4, 8):
            x = torch.randn(rows, 1024)
            for name, layers in (("F.linear", heads), ("Float32Linear", ours)):
                record(f"head float32 {name} {rows} rows",
                       timed(lambda: [layer(x) for layer in layers], args.rounds) / len(layers), 6563 * 1024 * 4)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"layers": "gpt2-medium" if args.gpt2 else "llama-t3", "params": params,
                                "cpu": torch.backends.cpu.get_cpu_capability(),
                                "native_bf16": native_bf16(torch.device("cpu")),
                                "threads": args.threads, "rounds": args.rounds, "ms": out}) + "\n")


if __name__ == "__main__":
    main()
