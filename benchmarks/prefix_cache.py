"""T3 prefill with and without the voice prefix cache (engine.batch_decode.PrefixCache), side by side.

A window of `--rows` chunks in one voice joins a fresh batch (`DecodeBatch.admit`: the prefill and token 0),
as the `fast` preset's continuous batching admits a text's sentences: without the cache every row runs its
voice's conditioning (Turbo: 375 prompt tokens; English: 34 positions) and its text; with it the voice runs
once (a miss: the first window of a voice) or not at all (a hit: every later window and call in that voice)
and the rows run their text alone. Variants alternate over --rounds rounds; medians. The logits for token 0
are compared too (max relative difference, float32 keys and values either way).

    python benchmarks/prefix_cache.py [--model turbo|chatterbox] [--checkpoint DIR] [--rows 4] [--rounds 3]
                                      [--preset fast] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from faster_chatterbox.bench import _machine
from faster_chatterbox.engine.batch_decode import BatchDecoder, DecodeRequest, PrefixCache
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts import ChatterboxTTS
from faster_chatterbox.tts_turbo import ChatterboxTurboTTS

SENTENCES = ["Oh, hello there, I was just thinking about the trip we took last summer.",
             "Do you remember the little bakery by the harbour?",
             "They had the best bread I have ever eaten, and the owner told us stories.",
             "The storms of that year went on until dark, every single night."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("turbo", "chatterbox"), default="turbo")
    ap.add_argument("--checkpoint")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint or Path(tempfile.gettempdir()) / f"faster-chatterbox-{args.model}-random")
    if not (ckpt / "conds.pt").is_file():
        write_random_checkpoint(ckpt, seed=0, model=args.model)
    cls = ChatterboxTurboTTS if args.model == "turbo" else ChatterboxTTS
    tts = cls.from_local(ckpt, device="cpu", preset=args.preset, watermark=False)
    voice, call = tts._call("Hello.", None, seed=1)
    t3 = tts.engine.t3
    requests = [DecodeRequest(voice.t3, tts.engine.text_tokens(SENTENCES[k % len(SENTENCES)]), call.sampling)
                for k in range(args.rows)]
    hits = PrefixCache(t3)
    variants = {"whole prefixes (no cache)": lambda: None, "cache miss (voice once)": lambda: PrefixCache(t3),
                "cache hit (text alone)": lambda: hits}
    times: dict[str, list[float]] = {name: [] for name in variants}
    logits = {}
    with torch.inference_mode():
        BatchDecoder(t3, hits).admit(requests[:1])  # the hit variant's voice, and a warm-up
        for k in range(args.rounds):
            for name, make in (variants.items() if k % 2 == 0 else reversed(variants.items())):
                decoder = BatchDecoder(t3, make())
                start = time.perf_counter()
                logits[name] = decoder.admit(requests)[0]
                times[name].append(time.perf_counter() - start)
    base = logits["whole prefixes (no cache)"]
    summary = {name: {"s": statistics.median(t), "rounds": t,
                      "max_rel_diff": float(((logits[name] - base).abs().max() / base.abs().max()))}
               for name, t in times.items()}
    ref = summary["whole prefixes (no cache)"]["s"]
    print(f"{args.model} {args.preset}, {args.rows} rows in one voice; machine: {_machine('cpu')}; "
          f"threads {args.threads}; medians of {args.rounds}")
    for name, s in summary.items():
        print(f"{name:28s} {s['s']:7.3f} s  x{ref / s['s']:.2f}  logits max rel diff {s['max_rel_diff']:.1e}  "
              f"rounds {' / '.join(f'{t:.3f}' for t in s['rounds'])}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"model": args.model, "preset": args.preset, "rows": args.rows, "rounds": args.rounds,
                                "machine": _machine("cpu"), "threads": args.threads, "summary": summary}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
