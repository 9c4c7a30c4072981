"""Voice conversion speed: seconds of compute per second of converted audio, side by side in one run.

    python benchmarks/vc_speed.py CKPT_DIR [--seconds 20] [--rounds 2]

CKPT_DIR needs a full-size s3gen.safetensors (e.g. `faster-chatterbox init-random DIR`). One synthetic
source and target clip; per round, in turn:
  exact          upstream's algorithm: the whole source in one render, float32, Euler 10 steps
  fast/pieces    the fast preset: pieces of 10 s with 1 s of context each side, rendered one after another
                 (render_batch 1, the CPU default), bf16 decoder, 8 AB2 steps
  fast/batched   the same pieces as one padded render batch (render_batch 8, the CUDA default)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.settings import engine_settings
from faster_chatterbox.vc import ChatterboxVC


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp())
    sf.write(folder / "source.wav", synthetic_voice(args.seconds, 16000, seed=1), 16000)
    sf.write(folder / "target.wav", synthetic_voice(8.0, 24000, seed=2), 24000)
    fast = engine_settings("fast", "cpu")
    variants = {
        "exact": ChatterboxVC.from_local(args.checkpoint, device="cpu", preset="exact", watermark=False),
        "fast/pieces": ChatterboxVC.from_local(args.checkpoint, device="cpu", settings=fast, watermark=False),
        "fast/batched": ChatterboxVC.from_local(args.checkpoint, device="cpu", settings=replace(fast, render_batch=8),
                                                watermark=False),
    }
    for vc in variants.values():
        vc.set_target_voice(folder / "target.wav")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, vc in variants.items():
            start = time.perf_counter()
            wav = vc.generate(folder / "source.wav", seed=3)
            times[name].append((time.perf_counter() - start) / (wav.shape[1] / vc.sr))
    base = min(times["exact"])
    for name, values in times.items():
        print(f"{name:13s} s per audio s: best {min(values):.3f} (all {', '.join(f'{v:.3f}' for v in values)}); "
              f"speed-up vs exact {base / min(values):.2f}x")


if __name__ == "__main__":
    main()
