"""A text's chunks rendered as one S3Gen sequence (SolveSettings.joint_render) against one render per chunk.

The `fast` preset's call on a ~300-character text (bench's corpus chapter for English Chatterbox, Turbo's
text of benchmarks/family_speed.py for Turbo): its sentences decode side by side in one T3 batch, then S3Gen
renders them, either each chunk alone with the 10 s decoder prompt (before) or runs of consecutive chunks as
one sequence with the prompt once and 3 silence tokens between chunks (joint). The same seed on both sides,
so T3 samples the same tokens (checked) and only the render differs. Each decode is capped at its text's
natural length (random weights never sample the stop token). Rounds alternate the variants; medians.

    python benchmarks/joint_render.py [--model chatterbox|turbo] [--checkpoint DIR] [--rounds 3] [--threads 2]
                                      [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_speed import TURBO_TEXT  # noqa: E402

from faster_chatterbox.bench import chapter_text  # noqa: E402
from faster_chatterbox.random_checkpoint import write_random_checkpoint  # noqa: E402
from faster_chatterbox.tts import ChatterboxTTS  # noqa: E402
from faster_chatterbox.tts_turbo import ChatterboxTurboTTS  # noqa: E402

CACHE = Path.home() / ".cache" / "faster-chatterbox"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["chatterbox", "turbo"], default="chatterbox")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    turbo = args.model == "turbo"
    ckpt = args.checkpoint or CACHE / ("random-turbo-full-seed0" if turbo else "random-full-seed0")
    if not ckpt.is_dir():
        write_random_checkpoint(ckpt, seed=0, model=args.model)
    cls = ChatterboxTurboTTS if turbo else ChatterboxTTS
    text = TURBO_TEXT if turbo else chapter_text(300)
    rows: dict[str, list[dict]] = {"one render per chunk": [], "joint render": []}
    with cls.from_local(ckpt, device="cpu", preset="fast", watermark=False) as tts:
        # the preset's call, each chunk capped at its natural length (checks.expected_tokens); also the warm-up
        base = tts.synthesize(text, seed=3, max_retries=0, token_budget_factor=1.0).settings
        calls = {name: replace(base, solve=replace(base.solve, joint_render=joint))
                 for name, joint in zip(rows, (False, True))}
        tokens = {}
        for r in range(args.rounds):
            for name, call in calls.items():
                result = tts.synthesize(text, settings=call)
                audio_s = len(result.audio) / result.sample_rate
                rows[name].append(dict(result.timings, audio_s=audio_s, rtf=result.timings["total_s"] / audio_s))
                tokens[name] = [c.tokens.tolist() for c in result.chunks]
                print(f"round {r + 1}: {name}: total {result.timings['total_s']:.2f} s, S3Gen "
                      f"{result.timings['s3gen_s']:.2f} s, audio {audio_s:.2f} s", file=sys.stderr, flush=True)
        chunks = len(result.chunks)
    same = len({json.dumps(t) for t in tokens.values()}) == 1
    base_total = statistics.median(r["total_s"] for r in rows["one render per chunk"])
    base_s3gen = statistics.median(r["s3gen_s"] for r in rows["one render per chunk"])
    print(f"{args.model}, fast, {len(text)} characters, {chunks} chunks; the same T3 tokens on both sides: {same}")
    print(f"| variant | total s (median of {args.rounds}) | S3Gen s | T3 s | audio s | RTF | total x before | S3Gen x before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("total_s", "s3gen_s", "t3_s", "audio_s", "rtf")}
        print(f"| {name} | {med['total_s']:.2f} | {med['s3gen_s']:.2f} | {med['t3_s']:.2f} | {med['audio_s']:.2f} | "
              f"{med['rtf']:.2f} | {base_total / med['total_s']:.2f}x | {base_s3gen / med['s3gen_s']:.2f}x |")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"model": args.model, "chars": len(text), "chunks": chunks, "same_tokens": same,
                                "threads": args.threads, "runs": rows}) + "\n")


if __name__ == "__main__":
    main()
