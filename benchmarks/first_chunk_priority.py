"""A short call while a long job decodes: how long the short call waits for its audio.

One process, one model (`fast` preset, CPU, random weights): a long job (`synthesize` of --long-chunks
chunks) runs on one thread; once its T3 batch is full, --short calls of one sentence are made one after
another on a second thread, each timed from call to audio. Run it from two checkouts, before and after a
scheduling change, alternating (`--runs`); the engine under test is whatever `faster_chatterbox` imports.

    PYTHONPATH=<checkout>/src python benchmarks/first_chunk_priority.py [--random-weights small|full] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

import faster_chatterbox
from faster_chatterbox import ChatterboxTTS
from faster_chatterbox.server.main import random_checkpoint

LONG_SENTENCE = "Sentence number {} of a long chapter that keeps the model busy for quite a while longer."


def run(tts: ChatterboxTTS, args) -> dict:
    long_text = " ".join(LONG_SENTENCE.format(i) for i in range(args.long_chunks))
    started, long_done = threading.Event(), {}

    def long_job():
        t0 = time.perf_counter()
        started.set()
        tts.synthesize(long_text, seed=1, max_new_tokens=args.long_tokens, max_chars=100)
        long_done["s"] = time.perf_counter() - t0

    worker = threading.Thread(target=long_job)
    worker.start()
    started.wait()
    time.sleep(args.head_start)  # the long job's first window fills the T3 batch
    waits = []
    for k in range(args.short):
        t0 = time.perf_counter()
        tts.generate("A short request, please.", seed=10 + k, max_new_tokens=args.short_tokens)
        waits.append(time.perf_counter() - t0)
    worker.join()
    return {"short_wait_s": waits, "short_wait_p50_s": statistics.median(waits), "long_job_s": long_done["s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-weights", default="small", choices=("small", "full"))
    parser.add_argument("--long-chunks", type=int, default=24)
    parser.add_argument("--long-tokens", type=int, default=120)
    parser.add_argument("--short", type=int, default=3)
    parser.add_argument("--short-tokens", type=int, default=25)
    parser.add_argument("--head-start", type=float, default=2.0, help="seconds between the long job and the first short call")
    parser.add_argument("--label", default=faster_chatterbox.__file__)
    parser.add_argument("--json", help="append the result as a JSON line to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tts = ChatterboxTTS.from_local(random_checkpoint(args.random_weights), device="cpu", preset="fast", watermark=False)
    tts.generate("Warm up.", seed=0, max_new_tokens=10)
    row = {"label": args.label, **vars(args), **run(tts, args)}
    print(f"{args.label}: short call waits p50 {row['short_wait_p50_s']:.2f} s "
          f"({', '.join(f'{w:.2f}' for w in row['short_wait_s'])}), long job {row['long_job_s']:.1f} s")
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps(row) + "\n")
    tts.close()


if __name__ == "__main__":
    main()
