"""Time to first audio when streaming on CPU, with T3 held while the first piece renders and without
(`EngineSettings.hold_t3_for_first_piece`, BENCHMARKS.md 36).

One process, a full-size checkpoint of --model (random weights by default, written once), `fast`'s settings
with the hold on and off, alternated in each round. Each run streams family_speed.py's text for the model
(`generate_stream`, seed 1) and stops after --pieces pieces; printed per run: each piece's ready time and
length, and each S3Gen render's start, duration and token count (the first piece's render is the one the
hold speeds up; the T3 decoding beside it is what waits).

    python benchmarks/first_audio.py [--model chatterbox|turbo] [--rounds 3] [--pieces 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from family_speed import MODELS

from faster_chatterbox import pipeline
from faster_chatterbox.bench import _machine
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.settings import engine_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("chatterbox", "turbo"), default="chatterbox")
    ap.add_argument("--checkpoint")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pieces", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = MODELS[args.model]
    ckpt = Path(args.checkpoint or Path(tempfile.gettempdir()) / f"faster-chatterbox-{args.model}-random")
    if not (ckpt / "conds.pt").is_file():
        write_random_checkpoint(ckpt, seed=0, model=args.model)
    settings = engine_settings("fast", "cpu", model=args.model)
    variants = {f"hold {on}": model["cls"].from_local(ckpt, device="cpu", watermark=False,
                                                      settings=replace(settings, hold_t3_for_first_piece=on))
                for on in (True, False)}
    renders: list[dict] = []
    render_group = pipeline._render_group

    def timed_render(engine, job, tokens, generators, urgent, **kwargs):
        begin = time.perf_counter()
        out = render_group(engine, job, tokens, generators, urgent, **kwargs)
        renders.append({"start_s": begin - start, "seconds": time.perf_counter() - begin,
                        "tokens": [len(t) for t in tokens]})
        return out

    pipeline._render_group = timed_render
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, tts in variants.items():
            renders.clear()
            pieces = []
            start = time.perf_counter()
            for piece in tts.generate_stream(model["text"], seed=1, **model["call"]):
                pieces.append({"ready_s": piece.ready_s, "audio_s": len(piece.audio) / piece.sample_rate})
                if len(pieces) == args.pieces:
                    break  # the stream's decode is cancelled
            runs[name].append({"pieces": pieces, "renders": list(renders)})
            print(name, json.dumps(runs[name][-1]), flush=True)
    summary = {name: {f"piece {i + 1} ready_s": statistics.median(r["pieces"][i]["ready_s"] for r in rs)
                      for i in range(args.pieces)} for name, rs in runs.items()}
    for name, rs in runs.items():
        summary[name]["first render_s"] = statistics.median(r["renders"][0]["seconds"] for r in rs)
    print(f"{args.model}; machine: {_machine('cpu')}; medians of {args.rounds}")
    for name, s in summary.items():
        print(f"{name:11s} " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"model": args.model, "machine": _machine("cpu"), "rounds": args.rounds,
                                "summary": summary, "runs": runs}) + "\n")


if __name__ == "__main__":
    main()
