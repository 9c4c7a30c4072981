"""Engine presets: which speed-ups a loaded ChatterboxTTS uses, chosen per device from measurements.

  exact    upstream step for step: float32, one sequence at a time on the global RNG, Euler on the
           cosine grid for 10 CFM steps, the S3 tokenizer run twice per voice, no text normalisation.
           The oracle the parity suite checks, and the fallback.
  fast     (the default) every speed-up whose measured loss is negligible: T3 in bf16 (KL to float32
           4.6e-4 per step, BENCHMARKS.md section 4) with a float32 KV cache on CPU; batched decoding
           with per-chunk random streams; the CFM solved with Adams-Bashforth 2 on a sway grid in 8
           estimator calls (no larger error than upstream's 10 Euler steps in every setting of the step
           study, BENCHMARKS.md section 3); the flow decoder in bf16 (mel 5.6e-4 relative) and HiFT's
           convolutions in bf16 (43 dB SNR against float32); English number/abbreviation normalisation.
  fastest  also the lossy ones, their cost stated in BENCHMARKS.md: T3 weights in int8 (CPU; KL 1.6e-3,
           top-1 85% on random weights), 6 CFM estimator calls (0.9-1.5x the error of upstream's 10), the
           decoder prompt cut to the voice's first 5 s (target mel moves 3.5e-3 relative; CFM ~1.9x faster),
           the S3 tokenizer run once per voice (6.5% of T3's prompt tokens change on random weights,
           benchmarks/voice_tokenize_once.py; saves one pass per new voice).

Numbers are from this project's 2-core AVX512-BF16 CPU; the GPU choices follow the same measurements
until they are measured on a GPU (bf16 everywhere there, no int8: weight-only int8 does not pay on GPUs
without fused kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

PRESET_NAMES = ("exact", "fast", "fastest")
DEFAULT_PRESET = "fast"


@dataclass(frozen=True)
class Preset:
    name: str
    t3_precision: str = "fp32"  # engine.quantize.PRECISIONS
    s3gen_dtype: torch.dtype = torch.float32  # flow decoder and vocoder weights/activations
    batched: bool = False  # T3 through engine.batch_decode (per-chunk generators), not the exact loop
    n_timesteps: int = 10  # CFM steps (grid intervals)
    solver: str | None = None  # None: upstream's Euler (engine.flow_solvers)
    schedule: str | None = None  # None: upstream's cosine grid
    sway_coef: float | None = None
    normalize_text: bool = False  # text.english before tokenizing
    tokenize_voice_once: bool = False  # T3's prompt tokens from the decoder's S3 tokenizer pass
    prompt_seconds: float | None = None  # decoder prompt cut to the voice's first N s (None: upstream's 10 s)

    @property
    def solve(self) -> dict:
        """The CFM solve as keyword arguments for S3Gen.inference."""
        return dict(n_timesteps=self.n_timesteps, solver=self.solver, schedule=self.schedule,
                    sway_coef=self.sway_coef)


EXACT = Preset("exact")
FAST = Preset("fast", t3_precision="bf16", s3gen_dtype=torch.bfloat16, batched=True, n_timesteps=8, solver="ab2",
              schedule="sway", sway_coef=-0.6, normalize_text=True)
FASTEST = replace(FAST, name="fastest", t3_precision="int8", n_timesteps=6, prompt_seconds=5.0,
                  tokenize_voice_once=True)


def get_preset(name: str, device: torch.device | str) -> Preset:
    """The preset `name` as it applies on `device`."""
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    preset = {"exact": EXACT, "fast": FAST, "fastest": FASTEST}[name]
    if torch.device(device).type == "cuda" and name != "exact":
        preset = replace(preset, t3_precision="bf16")
    return preset
