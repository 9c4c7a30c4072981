"""A model of the family on this CPU, each preset against upstream's: T3 decode step and end to end.

Full-size random weights of `--model` (turbo: GPT-2 medium T3 and meanflow S3Gen; nano: Turbo with GPT-2 small;
multilingual: the v2 Llama T3 with CFG and the CFM S3Gen, a French text; chatterbox: English, the Llama T3 with
CFG, the CFM S3Gen, section 18's 300-character text), written once (init-random --model
NAME); random weights
never sample the stop token, so every decode runs to its cap:
  T3 step   ms per token of one sequence's decode (generate_speech_tokens: one row for Turbo, the CFG pair
            for English and Multilingual) with each preset's T3 (exact float32, fast bf16, fastest int8; float32 KV cache):
            (time of N tokens - time of 1) / (N - 1), N = --step-tokens.
  end to end  `synthesize` of a ~300-character text: exact speaks it as one untouched chunk, as upstream; fast
            and fastest spread its sentences over the batch's rows and decode them as one batch. Each decode
            is capped at its text's natural length (checks.expected_tokens: 25 tokens per 16.7 characters,
            what a real voice's stop token gives), so the variants make about the same audio (ours: each chunk
            at least 50 tokens); --tokens N caps every chunk at N instead. Upstream's `generate` of the whole
            text with its loop capped the same way, run in the oracle venv (a child process that loads
            upstream once and times each round). Upstream 0.1.7 has no Nano: its baseline is 0.1.7's Turbo
            loaded as upstream's HEAD loads Nano (resemble-ai/chatterbox 5de7a54, tts_turbo.py: the GPT2_small
            config, 12 x 768, and t3_nano_v1.safetensors), which is all HEAD changes.
Variants are interleaved over --rounds rounds; medians. RTF = wall seconds / audio seconds.
--native-settings PRESET...: also those presets with the settings of a CPU with native bf16 (bf16 S3Gen, bf16
prefills, int8 for fastest) whatever this CPU has, to measure on an AVX2 CPU what resolving the settings
by the CPU (devices.native_bf16) changes.
--unpacked PRESET...: also those presets resolved as if FBGEMM's fp16 GEMM did not run here (devices.fbgemm_fp16
False: T3's bf16 Linears on oneDNN's bf16 GEMM, fastest in int8), to measure on an x86 CPU without AMX what
packing T3's weights for FBGEMM changes.
--copied-prefixes PRESET...: also those presets with the voice's prefix copied under every row of a batch
(EngineSettings.t3_shared_prefix_slots None) instead of read once per step (models/llama.py SharedPrefix).

    python benchmarks/family_speed.py --model chatterbox|turbo|nano|multilingual [--checkpoint DIR] [--tokens N] [--rounds 3]
                                      [--threads 2] [--native-settings fast fastest] [--unpacked fast fastest]
                                      [--copied-prefixes fast fastest] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from unittest import mock

import torch

import faster_chatterbox.settings as settings_module
from faster_chatterbox.bench import _machine
from faster_chatterbox.checks import expected_tokens
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.random_checkpoint import avoid_invalid_speech_ids, write_random_checkpoint
from faster_chatterbox.settings import engine_settings
from faster_chatterbox.tts import ChatterboxTTS
from faster_chatterbox.tts_multilingual import ChatterboxMultilingualTTS
from faster_chatterbox.tts_turbo import ChatterboxTurboTTS

TURBO_TEXT = ("Oh, hello there [chuckle]. I was just thinking about the trip we took last summer, up the coast and "
              "into the hills. Do you remember the little bakery by the harbour? They had the best bread I have ever "
              "eaten, and the owner told us stories about the storms of nineteen eighty seven until dark.")
ENGLISH_TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting each of the one hundred "
                "and twelve steps. At the top, he wiped the salt from the great lens and lit the lamp. Ships far out "
                "at sea saw the beam sweep across the dark water, and they knew the rocks were near. He liked it all.")
FRENCH_TEXT = ("Le vieux gardien du phare montait l'escalier chaque soir, en comptant les marches une par une. En "
               "haut, il essuyait le sel de la grande lentille et allumait la lampe. Les bateaux au large voyaient "
               "le faisceau balayer l'eau sombre, et ils savaient que les rochers etaient proches.")
# per model: our facade, its text and call arguments, the sampling of the step measurement (upstream's
# defaults), and upstream's class, its T3 method whose token cap the child overrides, and that cap's keyword
MODELS = {
    "chatterbox": dict(cls=ChatterboxTTS, text=ENGLISH_TEXT, call={},
                       step=dict(cfg_weight=0.5, min_p=0.05, top_p=1.0, repetition_penalty=1.2),
                       upstream=("chatterbox.tts", "ChatterboxTTS", "inference", "max_new_tokens", 0)),
    "turbo": dict(cls=ChatterboxTurboTTS, text=TURBO_TEXT, call={},
                  step=dict(cfg_weight=0.0, min_p=0.0, top_p=0.95, top_k=1000),
                  upstream=("chatterbox.tts_turbo", "ChatterboxTurboTTS", "inference_turbo", "max_gen_len", -1)),
    "nano": dict(cls=ChatterboxTurboTTS, load={"nano": True}, text=TURBO_TEXT, call={},
                 step=dict(cfg_weight=0.0, min_p=0.0, top_p=0.95, top_k=1000),
                 upstream=("chatterbox.tts_turbo", "ChatterboxTurboTTS", "inference_turbo", "max_gen_len", -1),
                 upstream_prelude=("from chatterbox.models.t3 import llama_configs as c; c.LLAMA_CONFIGS['GPT2_medium']"
                                   " = dict(c.LLAMA_CONFIGS['GPT2_medium'], n_embd=768, hidden_size=768, n_head=12,"
                                   " n_layer=12)"),
                 upstream_files={"t3_turbo_v1.safetensors": "t3_nano_v1.safetensors"}),
    "multilingual": dict(cls=ChatterboxMultilingualTTS, text=FRENCH_TEXT, call={"language_id": "fr"},
                         step=dict(cfg_weight=0.5, min_p=0.05, top_p=1.0, repetition_penalty=2.0),
                         upstream=("chatterbox.mtl_tts", "ChatterboxMultilingualTTS", "inference", "max_new_tokens",
                                   0)),
}

UPSTREAM = r"""
import importlib, sys, time, json, torch
ckpt, cap, threads, module, name, method, keyword, offset = sys.argv[1:9]
exec(sys.argv[10])  # the model's prelude (Nano: HEAD's GPT-2 small config), or nothing
torch.set_num_threads(int(threads))
tts = getattr(importlib.import_module(module), name).from_local(ckpt, "cpu")
tts.watermarker.apply_watermark = lambda wav, sample_rate: wav
inference = getattr(tts.t3, method)
setattr(tts.t3, method, lambda **kw: inference(**{**kw, keyword: int(cap) + int(offset)}))
call = json.loads(sys.argv[9])
text = sys.stdin.readline().rstrip("\n")
print("ready", flush=True)
for line in sys.stdin:  # one round per line
    start = time.perf_counter()
    wav = tts.generate(text, **call)
    print(json.dumps({"wall_s": time.perf_counter() - start, "audio_s": wav.shape[1] / tts.sr}), flush=True)
"""


def _reply(child: subprocess.Popen, start: str) -> str:
    """The child's next stdout line starting with `start` (upstream prints progress lines of its own)."""
    for line in child.stdout:
        if line.startswith(start):
            return line
    raise RuntimeError(f"upstream's process ended (exit {child.wait()}) without a line starting {start!r}")


def step_ms(tts, model: dict, n: int) -> float:
    text = tts.text_tokens(model["text"], **model["call"])
    times = {}
    for tokens in (1, n):
        torch.manual_seed(0)
        start = time.perf_counter()
        generate_speech_tokens(tts.t3, tts.conds.t3, text, max_new_tokens=tokens, **model["step"],
                               processors=tts.settings.sampling_order)
        times[tokens] = time.perf_counter() - start
    return 1000 * (times[n] - times[1]) / (n - 1)


def end_to_end(tts, model: dict, tokens: int | None) -> dict:
    start = time.perf_counter()
    cap = dict(max_new_tokens=tokens, token_budget_factor=None) if tokens else dict(token_budget_factor=1.0)
    result = tts.synthesize(model["text"], seed=1, **model["call"], **cap)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "audio_s": len(result.audio) / tts.sr, "chunks": len(result.chunks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="turbo")
    ap.add_argument("--checkpoint", help="a full-size checkpoint of --model (default: a random one, written once)")
    ap.add_argument("--tokens", type=int, help="every decode's cap (default: its text's natural length)")
    ap.add_argument("--step-tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--native-settings", nargs="*", default=[], choices=("exact", "fast", "fastest"))
    ap.add_argument("--unpacked", nargs="*", default=[], choices=("fast", "fastest"))
    ap.add_argument("--copied-prefixes", nargs="*", default=[], choices=("fast", "fastest"))
    ap.add_argument("--json")
    args = ap.parse_args()
    if (args.native_settings or args.unpacked) and args.model == "multilingual":
        ap.error("--native-settings and --unpacked are for chatterbox, turbo and nano (a multilingual load also resolves its "
                 "T3 file's rules)")
    torch.set_num_threads(args.threads)
    model = MODELS[args.model]
    ckpt = Path(args.checkpoint or Path(tempfile.gettempdir()) / f"faster-chatterbox-{args.model}-random")
    if not (ckpt / "conds.pt").is_file():
        write_random_checkpoint(ckpt, seed=0, model=args.model)
        if args.model == "multilingual":  # upstream's multilingual generate() crashes on ids S3Gen lacks
            avoid_invalid_speech_ids(ckpt)
    models = {preset: model["cls"].from_local(ckpt, device="cpu", preset=preset, watermark=False, **model.get("load", {}))
              for preset in ("exact", "fast", "fastest")}
    variants = [(preset, "native_bf16", True, {}, "native-bf16 settings") for preset in args.native_settings]
    variants += [(preset, "fbgemm_fp16", False, {}, "unpacked") for preset in args.unpacked]
    variants += [(preset, None, None, dict(t3_shared_prefix_slots=None), "copied prefixes")
                 for preset in args.copied_prefixes]
    for preset, check, answer, changes, label in variants:
        with mock.patch.object(settings_module, check, lambda device: answer) if check else contextlib.nullcontext():
            settings = engine_settings(preset, "cpu", model="nano" if model.get("load") else args.model)
        settings = replace(settings, **changes)
        models[f"{preset} ({label})"] = model["cls"].from_local(
            ckpt, device="cpu", watermark=False, settings=settings, **model.get("load", {}))
    upstream = None
    if not args.no_upstream:
        venv = Path(os.environ.get("FASTER_CHATTERBOX_ORACLE_VENV", Path(__file__).parents[1] / ".oracle-venv"))
        cap = args.tokens or round(expected_tokens(model["text"]))
        upstream_ckpt = ckpt
        if model.get("upstream_files"):  # the files as upstream's loader names them, linked
            upstream_ckpt = Path(tempfile.mkdtemp(prefix=f"upstream-{args.model}-"))
            for f in ckpt.iterdir():
                (upstream_ckpt / f.name).symlink_to(f)
            for name, ours in model["upstream_files"].items():
                (upstream_ckpt / name).symlink_to(ckpt / ours)
        upstream = subprocess.Popen([str(venv / "bin" / "python"), "-c", UPSTREAM, str(upstream_ckpt), str(cap),
                                     str(args.threads), *map(str, model["upstream"]), json.dumps(model["call"]),
                                     model.get("upstream_prelude", "")],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
        upstream.stdin.write(model["text"] + "\n")
        upstream.stdin.flush()
        _reply(upstream, "ready")
    rows: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for preset, tts in models.items():
            rows.setdefault(f"{preset} T3 step", []).append({"ms_per_token": step_ms(tts, model, args.step_tokens)})
            rows.setdefault(f"{preset} end to end", []).append(end_to_end(tts, model, args.tokens))
        if upstream is not None:
            upstream.stdin.write("go\n")
            upstream.stdin.flush()
            rows.setdefault("upstream end to end", []).append(json.loads(_reply(upstream, "{")))
        print("round:", json.dumps({name: runs[-1] for name, runs in rows.items()}), flush=True)
    if upstream is not None:
        upstream.stdin.close()
        upstream.wait()
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rows.items()}
    ref = summary.get("upstream end to end")
    cap = f"{args.tokens} tokens per chunk" if args.tokens else "natural lengths"
    print(f"{args.model}; machine: {_machine('cpu')}; threads {args.threads}; {cap}; medians of {args.rounds}")
    for name, s in summary.items():
        if "ms_per_token" in s:
            line = f"{s['ms_per_token']:.1f} ms/token (x{summary['exact T3 step']['ms_per_token'] / s['ms_per_token']:.2f} vs exact)"
        else:
            line = f"{s['wall_s']:.2f} s for {s['audio_s']:.2f} s of audio, RTF {s['wall_s'] / s['audio_s']:.2f}"
            if ref:  # speed per second of audio (fast's chunks may sum to more audio than one chunk)
                line += f", x{(ref['wall_s'] / ref['audio_s']) / (s['wall_s'] / s['audio_s']):.2f} upstream's speed"
        print(f"{name:22s} {line}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"model": args.model, "machine": _machine("cpu"), "tokens": args.tokens or "natural", "rounds": args.rounds,
                                "threads": args.threads, "summary": summary}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
