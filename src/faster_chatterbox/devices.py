"""Device names from the user (auto, cpu, cuda, cuda:N, mps) checked against what this machine has."""

from __future__ import annotations

import functools

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch.device for `device`, or a ValueError naming why it cannot be used here."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware. CPUs without AVX512-BF16 or AMX (every AVX2 CPU:
    AMD before Zen 4, Intel's consumer chips) emulate it: there a bf16 GEMM of a prefill's rows runs ~6x
    slower than float32 and S3Gen 5-7x (BENCHMARKS.md 31). GPUs and MPS are taken to have it."""
    if device.type != "cpu":
        return True
    cpu = torch.cpu
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def amx_tiles(device: torch.device) -> bool:
    """Whether `device` is a CPU with AMX tiles (Intel Sapphire Rapids and later), on which oneDNN's bf16 GEMM
    multiplies in the tiles: there T3's bf16 weights stay on it. Without them (AVX512-BF16 alone, as on AMD's
    Zen 4, or AVX2) FBGEMM's fp16 GEMM multiplies a decode step's rows faster (BENCHMARKS.md 32, 35)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and check is not None and bool(check())


@functools.cache
def _fbgemm_fp16_runs() -> bool:
    try:  # x86 builds have it, on CPUs with AVX2; a tiny layer packed and run says whether this one does
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
        return bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), packed).sum() == 64)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def fbgemm_fp16(device: torch.device) -> bool:
    """Whether `device` runs FBGEMM's fp16-weight GEMM (`torch.ops.quantized.linear_dynamic_fp16`: float32 rows,
    fp16 weights): x86 CPUs with AVX2, not ARM ones or GPUs. Where bf16 is emulated it multiplies a bf16 layer's
    weights 2.5-4.6x faster than the bf16 GEMM from 4 rows up, and ~1.8x faster at a decode step's 2 rows on a
    Zen 4 with native bf16 (engine.quantize.PackedFp16Linear; BENCHMARKS.md 32, 35)."""
    return device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines and _fbgemm_fp16_runs()
