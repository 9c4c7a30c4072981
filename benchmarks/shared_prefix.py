"""A batch's voice prefix copied under every row against read once for all of them (`SharedPrefix`), side by
side in one process (BENCHMARKS.md 33).

Full-size T3 at preset `fast` (random weights; Turbo's GPT-2 medium or English Chatterbox's Llama), R backbone
rows of one voice decoding together in the continuous batch (`generate_speech_tokens_batch` with a
`PrefixCache`): Turbo R chunks of text, Chatterbox R / 2 chunks with their CFG pairs. The voice's prefix is
Turbo's 375 prompt tokens, Chatterbox's 150 plus speaker and emotion. Layouts:
  copied   the prefix's keys and values copied into every row's cache (`shared_prefix_slots=None`)
  shared   the rows' caches hold their text and speech only, attention reads the prefix once per step
Each round times both layouts at every R in turn: a decode of 2 tokens (the prefill) and of --steps tokens;
ms per step = the difference over (steps - 2), medians over --rounds. Also whether both layouts drew the
same tokens (multinomial draws from the same generators: only rounding can make them differ).

    python benchmarks/shared_prefix.py [--model turbo|chatterbox] [--rows 1 2 4 8] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from faster_chatterbox.bench import _machine
from faster_chatterbox.engine.batch_decode import DecodeRequest, PrefixCache, generate_speech_tokens_batch
from faster_chatterbox.engine.sampling import SamplingParams
from faster_chatterbox.family import random_checkpoint
from faster_chatterbox.tts import ChatterboxTTS
from faster_chatterbox.tts_turbo import ChatterboxTurboTTS
from t3_packed import TEXTS  # the same 8 sentences (benchmarks/ is on the path of a script run from it)

LAYOUTS = {"copied": None, "shared": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("turbo", "chatterbox"), default="turbo")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    turbo = args.model == "turbo"
    if any(not 1 <= r <= len(TEXTS) or (not turbo and r % 2) for r in args.rows):
        ap.error(f"--rows: 1 to {len(TEXTS)}, even for chatterbox (CFG pairs)")
    torch.set_num_threads(args.threads)
    tts_class = ChatterboxTurboTTS if turbo else ChatterboxTTS
    tts = tts_class.from_local(random_checkpoint("full", args.model), device="cpu", preset="fast",
                               watermark=False)
    sampling = (SamplingParams(temperature=0.8, cfg_weight=0.0, min_p=0.0, top_p=0.95, top_k=1000,
                               repetition_penalty=1.2, processors=tts.settings.sampling_order) if turbo
                else SamplingParams(processors=tts.settings.sampling_order))
    voice = tts.conds.t3
    prefixes = PrefixCache(tts.t3)

    def decode(rows: int, layout: str, tokens: int) -> tuple[float, list[list[int]]]:
        texts = TEXTS[: rows if turbo else rows // 2]
        requests = [DecodeRequest(voice, tts.text_tokens(t), sampling, max_new_tokens=tokens,
                                  generator=torch.Generator().manual_seed(i)) for i, t in enumerate(texts)]
        start = time.perf_counter()
        out = generate_speech_tokens_batch(tts.t3, requests, prefix_cache=prefixes,
                                           shared_prefix_slots=LAYOUTS[layout])
        return time.perf_counter() - start, [t.tolist() for t in out]

    with torch.inference_mode():
        decode(args.rows[0], "copied", 2)  # the voice's prefix into the cache, and a warm-up
        times = {(r, layout): [] for r in args.rows for layout in LAYOUTS}
        same_tokens = {r: [] for r in args.rows}
        for _ in range(args.rounds):
            for r in args.rows:
                drawn = {}
                for layout in LAYOUTS:
                    prefill, _ = decode(r, layout, 2)
                    total, drawn[layout] = decode(r, layout, args.steps)
                    times[r, layout].append(1000 * (total - prefill) / (args.steps - 2))
                same_tokens[r].append(drawn["copied"] == drawn["shared"])
                print(f"rows {r}: " + ", ".join(f"{layout} {times[r, layout][-1]:.1f} ms" for layout in LAYOUTS),
                      flush=True)
    print(f"machine: {_machine('cpu')}; {args.model} fast, {args.steps} tokens, medians of {args.rounds}")
    summary = {}
    for r in args.rows:
        copied, shared = (statistics.median(times[r, layout]) for layout in LAYOUTS)
        summary[r] = dict(copied_ms=copied, shared_ms=shared, speedup=copied / shared, same_tokens=all(same_tokens[r]))
        print(f"{r} rows: copied {copied:6.1f} ms/step, shared {shared:6.1f} ms/step (x{copied / shared:.2f}); "
              f"same tokens: {all(same_tokens[r])}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"machine": _machine("cpu"), "model": args.model, "steps": args.steps,
                                "rounds": args.rounds, "summary": summary}) + "\n")


if __name__ == "__main__":
    main()
