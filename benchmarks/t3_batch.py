"""T3 decode throughput against the number of sequences decoded together (each with its CFG pair).

Full-size T3 with random weights, fp32, on this machine's CPU. For every batch size the same kind of job:
that many requests with different voices and texts (30 to 58 text tokens), `--steps` tokens each. Decode
time runs from the end of the prefill to the last token (sampling included); throughput is tokens summed
over the sequences per second of it. The exact single-sequence path (`generate_speech_tokens`) runs beside
the batch engine at batch 1. Variants are interleaved over `--rounds` rounds; the table gives medians.
A last line times dropping a finished sequence from a 16-row KV cache: in place, as the engine does, and
by an index_select copy of the whole cache.

    python benchmarks/t3_batch.py [--steps 30] [--rounds 3] [--sizes 1 2 4 8] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from faster_chatterbox.bench import _machine
from faster_chatterbox.engine.batch_decode import DecodeRequest, generate_speech_tokens_batch
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.t3 import T3, T3Cond


def build_t3() -> T3:
    torch.manual_seed(0)
    return T3().eval()


def make_requests(t3: T3, n: int, steps: int) -> list[DecodeRequest]:
    cfg = t3.cfg
    requests = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        text = torch.randint(1, cfg.text_tokens_dict_size, (30 + 4 * k,), generator=g)
        text[0], text[-1] = cfg.start_text_token, cfg.stop_text_token
        cond = T3Cond(speaker_emb=torch.randn(1, cfg.speaker_embed_size, generator=g),
                      cond_prompt_speech_tokens=torch.randint(0, 6561, (1, cfg.speech_cond_prompt_len), generator=g),
                      emotion_adv=0.5 * torch.ones(1, 1, 1))
        requests.append(DecodeRequest(cond, text, max_new_tokens=steps, generator=torch.Generator().manual_seed(k)))
    return requests


class PrefillClock:
    """Notes when the backbone's first forward of a run (the prefill) returns."""

    def __init__(self, t3: T3):
        self.prefill_done: float | None = None
        inner = t3.tfmr.forward

        def forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            if self.prefill_done is None:
                self.prefill_done = time.perf_counter()
            return out

        t3.tfmr.forward = forward

    def run(self, fn) -> tuple[list[torch.Tensor], float, float]:
        """-> (tokens per sequence, prefill_s, decode_s)"""
        self.prefill_done = None
        start = time.perf_counter()
        tokens = fn()
        end = time.perf_counter()
        return tokens, self.prefill_done - start, end - self.prefill_done


def exact_path(t3: T3, requests: list[DecodeRequest]) -> list[torch.Tensor]:
    (r,) = requests
    return [generate_speech_tokens(t3, r.cond, r.text_tokens, max_new_tokens=r.max_new_tokens,
                                   generator=r.generator)]


def time_compaction(t3: T3, rows: int = 16, slots: int = 600, repeats: int = 3) -> tuple[float, float]:
    """Drop the first sequence (2 rows) of `rows` with `slots` filled cache slots -> seconds (median) for
    LlamaCache.keep_rows (the two tail rows move into its place) and for an index_select of every cache."""
    keep = [rows - 2, rows - 1] + list(range(2, rows - 2))
    in_place, gathered = [], []
    for _ in range(repeats):
        cache = t3.tfmr.new_cache(rows, slots)
        index = torch.tensor(keep)
        start = time.perf_counter()
        for layer in cache.layers:
            layer.k.index_select(0, index)
            layer.v.index_select(0, index)
        gathered.append(time.perf_counter() - start)
        start = time.perf_counter()
        cache.keep_rows(keep, kv_len=slots)
        in_place.append(time.perf_counter() - start)
    return statistics.median(in_place), statistics.median(gathered)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    ap.add_argument("--json", help="append the results as one JSON line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t3 = build_t3()
    clock = PrefillClock(t3)
    variants = [("exact path", 1, exact_path)] + [("batch", n, generate_speech_tokens_batch) for n in args.sizes]
    runs: dict[tuple[str, int], list[tuple[int, float, float]]] = {(name, n): [] for name, n, _ in variants}
    with torch.inference_mode():
        for rnd in range(args.rounds):
            for name, n, fn in variants:
                requests = make_requests(t3, n, args.steps)
                tokens, prefill_s, decode_s = clock.run(lambda: fn(t3, requests))
                runs[(name, n)].append((sum(len(t) for t in tokens), prefill_s, decode_s))
                print(f"round {rnd}: {name} x{n}: {sum(len(t) for t in tokens)} tokens, prefill {prefill_s:.2f} s, "
                      f"decode {decode_s:.2f} s", flush=True)
        keep_rows_s, index_select_s = time_compaction(t3)

    rows = []
    for (name, n), results in runs.items():
        tokens = results[0][0]
        decode_s = statistics.median(r[2] for r in results)
        rows.append(dict(variant=name, sequences=n, backbone_rows=2 * n, tokens=tokens,
                         prefill_s=statistics.median(r[1] for r in results), decode_s=decode_s,
                         ms_per_step=1000 * decode_s / args.steps, tokens_per_s=tokens / decode_s))
    base = rows[0]["tokens_per_s"]
    print(f"\nT3 full size, random weights, fp32, {args.steps} steps per sequence, medians of {args.rounds} rounds, "
          f"intra-op threads: {torch.get_num_threads()}")
    print("| variant | sequences | backbone rows | prefill s | decode ms/step | tokens/s (all sequences) | vs exact |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['sequences']} | {r['backbone_rows']} | {r['prefill_s']:.2f} | "
              f"{r['ms_per_step']:.1f} | {r['tokens_per_s']:.2f} | {r['tokens_per_s'] / base:.2f}x |")
    print(f"\nDropping one sequence from 8 (16 -> 14 rows) at 600 filled KV slots: keep_rows in place "
          f"{1000 * keep_rows_s:.0f} ms, index_select of the whole cache {1000 * index_select_s:.0f} ms")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(dict(job="t3_batch", steps=args.steps, rounds=args.rounds, rows=rows,
                                    keep_rows_16_to_14_s=keep_rows_s, index_select_16_to_14_s=index_select_s,
                                    machine=_machine("cpu"))) + "\n")


if __name__ == "__main__":
    main()
