"""Device names from the user (auto, cpu, cuda, cuda:N, mps) checked against what this machine has."""

from __future__ import annotations

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
