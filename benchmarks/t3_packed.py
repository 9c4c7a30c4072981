"""Turbo's T3 on an x86 CPU that emulates bf16 (AVX2): the kernels for its bf16 weights, side by side in one
process (BENCHMARKS.md 32).

Full-size GPT-2 medium T3 of a Turbo checkpoint (random weights by default, written once), R chunks of text in
one voice decoding together in the continuous batch (`generate_speech_tokens_batch`, Turbo's sampling, the
voice prefix cached), R = --rows. Variants, each T3 built from the same float32 load:
  bf16             `to_bf16_` (bf16 weights and activations) on oneDNN's emulated bf16 GEMM (section 31's decode)
  packed, bf16 act `to_bf16_`, then the Linears as `PackedFp16Linear` (FBGEMM's fp16 GEMM on the same weights),
                   activations bf16 between them (the first version of this change)
  packed           `pack_fp16_`: the bf16 weights packed, the rest of T3 and the activations float32 (what
                   `fast` resolves to there)
Each round times every variant in turn: a decode of 2 tokens (the prefill) and of --steps tokens; ms per step
= the difference over (steps - 2). Medians over --rounds. Quality: the relative error of the logits of 21
teacher-forced steps of one chunk against float32 T3's.

    python benchmarks/t3_packed.py [--checkpoint DIR] [--rows 4] [--steps 30] [--rounds 3] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from faster_chatterbox.bench import _machine
from faster_chatterbox.devices import fbgemm_fp16
from faster_chatterbox.engine.batch_decode import DecodeRequest, PrefixCache, generate_speech_tokens_batch
from faster_chatterbox.engine.quantize import PackedFp16Linear, conv1d_to_linear_, pack_fp16_, to_bf16_
from faster_chatterbox.engine.sampling import SamplingParams
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts_turbo import ChatterboxTurboTTS

TEXTS = ["Oh, hello there. I was just thinking about the trip we took last summer.",
         "Up the coast and into the hills, do you remember the little bakery by the harbour?",
         "They had the best bread I have ever eaten, and the owner told us stories.",
         "The storms of nineteen eighty seven went on until dark, he said.",
         "We walked back along the cliffs while the lights came on in the town below.",
         "Nobody wanted to leave, and we promised to come back the next summer.",
         "We never did, of course, but I still think about that bread.",
         "Maybe this year we should finally go back and see if it is still there."]


def as_linears(t3_fp32):
    """A float32 copy with GPT-2's Conv1D layers as the nn.Linears they equal (every variant starts from it)."""
    t3 = copy.deepcopy(t3_fp32)
    conv1d_to_linear_(t3.tfmr)
    return t3


def variants(t3_fp32) -> dict[str, nn.Module]:
    mixed = to_bf16_(as_linears(t3_fp32))
    for name, child in list(mixed.named_modules()):
        if type(child) is nn.Linear:
            parent, _, attr = name.rpartition(".")
            setattr(mixed.get_submodule(parent), attr, PackedFp16Linear.from_linear(child))
    return {"bf16": to_bf16_(as_linears(t3_fp32)), "packed, bf16 act": mixed, "packed": pack_fp16_(as_linears(t3_fp32))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not fbgemm_fp16(torch.device("cpu")):
        ap.error("FBGEMM's fp16 GEMM does not run on this CPU (an x86 CPU with AVX2 is needed)")
    if not 1 <= args.rows <= len(TEXTS):
        ap.error(f"--rows must be 1 to {len(TEXTS)}")
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint or Path(tempfile.gettempdir()) / "faster-chatterbox-turbo-random")
    if not (ckpt / "conds.pt").is_file():
        write_random_checkpoint(ckpt, seed=0, model="turbo")
    tts = ChatterboxTurboTTS.from_local(ckpt, device="cpu", preset="exact", watermark=False)
    models = variants(tts.t3)
    for t3 in models.values():
        t3.tfmr.kv_dtype = torch.float32  # the float32 KV cache every CPU preset decodes with
    sampling = SamplingParams(temperature=0.8, cfg_weight=0.0, min_p=0.0, top_p=0.95, top_k=1000,
                              repetition_penalty=1.2, processors=tts.settings.sampling_order)
    texts = [tts.text_tokens(t) for t in TEXTS[:args.rows]]
    caches = {name: PrefixCache(t3) for name, t3 in models.items()}

    def decode(name: str, tokens: int) -> float:
        requests = [DecodeRequest(tts.conds.t3, text, sampling, max_new_tokens=tokens,
                                  generator=torch.Generator().manual_seed(i)) for i, text in enumerate(texts)]
        start = time.perf_counter()
        generate_speech_tokens_batch(models[name], requests, prefix_cache=caches[name])
        return time.perf_counter() - start

    with torch.inference_mode():
        speech = torch.randint(0, 6561, (20,), generator=torch.Generator().manual_seed(0))
        ref = tts.t3(tts.conds.t3, texts[0], speech).float()  # (1, 21, V): 21 teacher-forced steps
        quality = {name: ((t3(tts.conds.t3, texts[0], speech).float() - ref).norm() / ref.norm()).item()
                   for name, t3 in models.items()}
    for name in models:
        decode(name, 2)  # the voice's prefix into each cache, and a warm-up
    steps: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            prefill = decode(name, 2)
            steps[name].append(1000 * (decode(name, args.steps) - prefill) / (args.steps - 2))
        print("round:", {name: round(v[-1], 1) for name, v in steps.items()}, flush=True)
    summary = {name: {"ms_per_step": statistics.median(v), "logits_rel_error": quality[name]}
               for name, v in steps.items()}
    print(f"machine: {_machine('cpu')}; {args.rows} rows, {args.steps} tokens, medians of {args.rounds}")
    base = summary["bf16"]["ms_per_step"]
    for name, s in summary.items():
        print(f"{name:18s} {s['ms_per_step']:7.1f} ms/step (x{base / s['ms_per_step']:.2f} vs bf16)  "
              f"logits rel. error vs float32 {s['logits_rel_error']:.1e}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"machine": _machine("cpu"), "rows": args.rows, "steps": args.steps,
                                "rounds": args.rounds, "summary": summary}) + "\n")


if __name__ == "__main__":
    main()
