"""HiFT vocoder: speed of the fast form against upstream, bf16 error, batched rows, F0 smoothing.

Full-size HiFT with the `mel2wav.*` weights of a checkpoint (default: the full-size random one, written by
`faster-chatterbox bench --random-weights`), all variants in one process:

  speed     upstream's HiFTGenerator (the parity oracle, same weights) | ours as the exact preset runs it
            (float32, weight norm folded) | `make_fast(float32)` | `make_fast(bfloat16)`, on `--seconds` of mel,
            with each of `--threads`; variants interleaved over `--rounds` rounds, medians. Plus 4 rows of
            different lengths decoded as one padded batch against one at a time (bf16), in audio s per s.
  bf16      waveform error of make_fast(bfloat16) against float32 from the same seed: SNR (dB) and max |diff|,
            on the checkpoint and on "tame" weights (the parity tests' scheme: weight-norm magnitudes 0.5, so
            activations stay moderate and the output unclipped; the random checkpoint saturates: see `clipped`),
            for a random mel and the mel of audio/synthetic.py's voice.
  batched   each row of a padded batch (per-row generators) against that row alone: max |diff| / peak over the
            row without its last 3 samples, and over those 3 (the iSTFT overlap-add tail).
  F0        jitter (models/hift.f0_jitter: mean relative frame-to-frame F0 change over consecutive voiced
            frames) before/after F0Smoothing(): predicted F0 of the synthetic voice (checkpoint and tame
            weights) and a synthetic contour with 5% frame noise (tests' _f0_track).

    .oracle-venv/bin/python benchmarks/hift_speed.py [--checkpoint DIR] [--seconds 4 20] [--threads 1 2] [--rounds 3]

Upstream runs in this process, so the interpreter is the oracle venv's (scripts/install-oracle.sh).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch

from faster_chatterbox.audio.mel import s3gen_mel_spectrogram
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checkpoint import read_safetensors
from faster_chatterbox.models.hift import F0Smoothing, HiFTConfig, HiFTGenerator, f0_jitter, smooth_f0

DEFAULT_CKPT = Path.home() / ".cache" / "faster-chatterbox" / "random-full-seed0"


def hift_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = read_safetensors(ckpt / "s3gen.safetensors")
    return {k[len("mel2wav."):]: v for k, v in state.items() if k.startswith("mel2wav.")}


def tame_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The parity tests' weights: moderate activations, F0 head scaled to ~0-500 Hz."""
    g = torch.Generator().manual_seed(seed)
    model = HiFTGenerator(HiFTConfig()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("original0"):
                p.copy_(0.5 + 0.05 * noise)
            elif name.endswith("alpha"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
        head = model.f0_predictor.classifier
        head.bias.zero_()
        raw = head(model.f0_predictor.condnet(random_mel(50, 1)).transpose(1, 2))
        head.weight.mul_(150.0 / raw.std())
        head.bias.fill_(100.0)
    return model.state_dict()


def build(state: dict[str, torch.Tensor], fast: torch.dtype | None) -> HiFTGenerator:
    model = HiFTGenerator(HiFTConfig()).eval()
    model.load_state_dict(state)
    if fast is None:
        model.fold_weight_norm()
        return model
    return model.make_fast(fast)


def upstream(state: dict[str, torch.Tensor]):
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.hifigan import HiFTGenerator as UpstreamHiFT

    model = UpstreamHiFT(sampling_rate=24000, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
                         source_resblock_kernel_sizes=[7, 7, 11],
                         source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                         f0_predictor=ConvRNNF0Predictor()).eval()
    model.load_state_dict(state)
    return model


def random_mel(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 80, frames, generator=g) - 4.0


def voice_mel(seconds: float) -> torch.Tensor:
    return s3gen_mel_spectrogram(torch.from_numpy(synthetic_voice(seconds)))  # (1, 80, 50 s)


def medians(cases: dict, rounds: int) -> dict[str, float]:
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(models: dict, seconds: list[float], threads: list[int], rounds: int) -> None:
    print("\n## Speed (median s per call; x = upstream / variant)\n")
    print("| threads | audio s | " + " | ".join(models) + " |")
    print("|---|---|" + "---|" * len(models))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for sec in seconds:
            mel = random_mel(int(sec * 50))
            with torch.inference_mode():
                cases = {name: (lambda fn=fn: fn(mel)) for name, fn in models.items()}
                t = medians(cases, rounds)
            base = t.get("upstream", t["exact"])
            cells = [f"{t[k]:.2f} (x{base / t[k]:.2f})" for k in models]
            print(f"| {n_threads} | {sec:g} | " + " | ".join(cells) + " |", flush=True)


def batched_speed(model: HiFTGenerator, rounds: int) -> None:
    torch.set_num_threads(1)
    lengths = [200, 150, 125, 75]  # frames: 4, 3, 2.5, 1.5 s
    rows = [random_mel(n, i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(rows), 80, max(lengths))
    for i, row in enumerate(rows):
        batch[i, :, : row.shape[-1]] = row[0]
    mel_lens = torch.tensor(lengths)
    t = medians({"one at a time": lambda: [model.inference(r) for r in rows],
                 "one padded batch": lambda: model.inference(batch, mel_lens)}, rounds)
    audio = sum(lengths) / 50
    print(f"\n## Batched rows (make_fast(bfloat16), 1 thread, rows of {[n / 50 for n in lengths]} s)\n")
    for name, sec in t.items():
        print(f"- {name}: {sec:.2f} s, {audio / sec:.2f} audio s per s")


def snr_db(wav: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().pow(2).sum() / (wav.double() - ref.double()).pow(2).sum()))


def bf16_error(states: dict) -> None:
    torch.set_num_threads(1)
    print("\n## bfloat16 against float32 (same seed, 4 s)\n")
    print("| weights | mel | SNR dB | max abs diff | fp32 peak | fp32 clipped |")
    print("|---|---|---|---|---|---|")
    mels = {"random": random_mel(200, 1), "synthetic voice": voice_mel(4.0)}
    for wname, state in states.items():
        ref, fast = build(state, None), build(state, torch.bfloat16)
        for mname, mel in mels.items():
            torch.manual_seed(0)
            want, _ = ref.inference(mel)
            torch.manual_seed(0)
            got, _ = fast.inference(mel)
            clipped = float((want.abs() >= 0.99 - 1e-6).float().mean())
            print(f"| {wname} | {mname} | {snr_db(got, want):.1f} | {float((got - want).abs().max()):.2e} | "
                  f"{float(want.abs().max()):.3f} | {clipped:.0%} |", flush=True)


def batched_rows(state: dict) -> None:
    torch.set_num_threads(1)
    lengths = [100, 61, 37]
    rows = [random_mel(n, 10 + i) for i, n in enumerate(lengths)]
    batch = torch.full((3, 80, max(lengths)), 3.0)
    for i, row in enumerate(rows):
        batch[i, :, : row.shape[-1]] = row[0]
    print(f"\n## Batched rows against unbatched (tame weights, rows of {lengths} frames, per-row generators)\n")
    print("| dtype | row frames | body max diff / peak | last 3 samples max diff / peak | padding |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        model = build(state, None if dtype == torch.float32 else dtype)
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        wav, _ = model.inference(batch, torch.tensor(lengths), generators=gens)
        for i, (n, row) in enumerate(zip(lengths, rows)):
            ref, _ = model.inference(row, generators=[torch.Generator().manual_seed(i)])
            peak, end = float(ref.abs().max()), n * 480
            body = float((wav[i, : end - 3] - ref[0, :-3]).abs().max()) / peak
            tail = float((wav[i, end - 3:end] - ref[0, -3:]).abs().max()) / peak
            pad = "zero" if torch.count_nonzero(wav[i, end:]) == 0 else "NOT ZERO"
            print(f"| {str(dtype)[6:]} | {n} | {body:.1e} | {tail:.1e} | {pad} |", flush=True)


def jitter(states: dict) -> None:
    torch.set_num_threads(1)
    smoothing = F0Smoothing()
    print(f"\n## F0 jitter before / after {smoothing}\n")
    print("| F0 | voiced frames | jitter before | jitter after |")
    print("|---|---|---|---|")
    mels = {"synthetic voice": voice_mel(10.0), "random mel": random_mel(500, 2)}
    tracks = {}
    for wname, state in states.items():
        model = build(state, None)
        for mname, mel in mels.items():
            with torch.inference_mode():
                tracks[f"predicted, {wname} weights, {mname}"] = model.f0_predictor(mel)
    t = torch.arange(500) / 50
    g = torch.Generator().manual_seed(0)
    contour = 140 + 30 * torch.sin(2 * math.pi * 0.4 * t) + 6 * torch.sin(2 * math.pi * 3.0 * t)
    contour[100:130] = 0
    tracks["synthetic contour (3 Hz vibrato), clean"] = contour[None]
    tracks["same + 5% frame noise"] = (contour * (1 + 0.05 * torch.randn(500, generator=g)))[None]
    for name, f0 in tracks.items():
        voiced = float((f0 > 10).float().mean())
        if voiced == 0:  # the random checkpoint's F0 head gives 0-2 Hz: all unvoiced, the source is noise
            print(f"| {name} | 0% (max F0 {float(f0.max()):.1f} Hz) | n/a | n/a |")
            continue
        print(f"| {name} | {voiced:.0%} | {f0_jitter(f0):.4f} | {f0_jitter(smooth_f0(f0, smoothing)):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 20.0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    state = hift_state(args.checkpoint)
    states = {"checkpoint": state, "tame": tame_state()}
    models = {}
    try:
        up = upstream(state)
        models["upstream"] = lambda mel: up.inference(speech_feat=mel)
    except ImportError:
        print("(upstream chatterbox-tts is not installed: no upstream column)")
    variants = {"exact": None, "fast fp32": torch.float32, "fast bf16": torch.bfloat16}
    for name, dtype in variants.items():
        models[name] = build(state, dtype).inference

    print(f"# HiFT vocoder benchmark\n\n`python benchmarks/hift_speed.py --checkpoint {args.checkpoint} "
          f"--seconds {' '.join(f'{s:g}' for s in args.seconds)} --threads {' '.join(map(str, args.threads))} "
          f"--rounds {args.rounds}`\n\ntorch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    bf16_error(states)
    batched_rows(states["tame"])
    jitter(states)
    batched_speed(build(state, torch.bfloat16), args.rounds)
    speed(models, args.seconds, args.threads, args.rounds)


if __name__ == "__main__":
    main()
