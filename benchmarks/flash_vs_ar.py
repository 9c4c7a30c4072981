"""Chatterbox-Flash (block-diffusion T3) against autoregressive Chatterbox, both at preset `fast`, side by side.

Full-size random checkpoints (init-random, and init-random --model flash), the same 300-character text and
the same voice clip; every round runs both, in alternating order (the machine is shared and noisy: compare
within a round). Random weights never decide the stop token, so every chunk runs to `--tokens` speech
tokens on both sides: the same T3 work to do. Per model and round:
  t3 tok/s     speech tokens of all chunks per second of T3 (submission to last token, `timings["t3_s"]`)
  RTF          whole `synthesize` time over the audio's duration
  first audio  `generate_stream`: seconds to the first piece (token streaming of the first chunk: a piece
               after 25 tokens, i.e. after 2 blocks for Flash)
Flash's `num_steps` per block can be swept with --flash-steps (the preset's by default).

    python benchmarks/flash_vs_ar.py [--tokens 96] [--rounds 2] [--device cpu] [--flash-steps 5 3] [--unpacked]
                                     [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.bench import _machine, random_checkpoint_dir
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.settings import FLASH_PRESETS
from faster_chatterbox.tts import ChatterboxTTS
from faster_chatterbox.tts_flash import ChatterboxFlashTTS

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting each of the one hundred "
        "and twelve steps. At the top, he wiped the salt from the great lens and lit the lamp. Ships far out "
        "at sea saw the beam sweep across the dark water, and they knew the rocks were near. He liked it all.")
assert len(TEXT) == 300, len(TEXT)


def flash_checkpoint_dir() -> Path:
    """A full-size random Flash checkpoint, written once next to the base one and reused."""
    directory = random_checkpoint_dir().parent / "flash-random-full"
    if not (directory / "conds.pt").is_file():
        write_random_checkpoint(directory, seed=0, model="flash")
    return directory


def run_once(tts, voice, tokens: int, seed: int, extra: dict) -> dict:
    start = time.perf_counter()
    result = tts.synthesize(TEXT, voice=voice, seed=seed, max_new_tokens=tokens, **extra)
    total = time.perf_counter() - start
    n_tokens = sum(c.t3_steps for c in result.chunks)
    audio_s = len(result.audio) / result.sample_rate
    stream = tts.generate_stream(TEXT, voice=voice, seed=seed, max_new_tokens=tokens, **extra)
    first = next(stream).ready_s
    stream.close()  # cancels the rest
    return dict(tokens=n_tokens, chunks=len(result.chunks), t3_s=result.timings["t3_s"],
                t3_tok_s=n_tokens / result.timings["t3_s"], rtf=total / audio_s, first_audio_s=first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=96, help="speech tokens per chunk (both models)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flash-steps", type=int, nargs="*", default=[], help="Flash num_steps to compare")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--unpacked", action="store_true",
                    help="also both models with T3's bf16 weights on oneDNN (EngineSettings.t3_packed_fp16 False) "
                         "where their settings pack them for FBGEMM (x86 CPUs without AMX)")
    ap.add_argument("--json", help="append the results as one JSON line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ar = ChatterboxTTS.from_local(random_checkpoint_dir(), args.device, preset="fast", watermark=False)
    flash = ChatterboxFlashTTS.from_local(flash_checkpoint_dir(), args.device, preset="fast", watermark=False)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "voice.wav"
        sf.write(clip, synthetic_voice(10.0, 24000, seed=7), 24000)
        voices = {"ar": ar.voice_from_clip(clip), "flash": flash.voice_from_clip(clip)}
    variants = [("ar fast", ar, "ar", {})]
    steps = args.flash_steps or [FLASH_PRESETS["fast"].num_steps]
    variants += [(f"flash fast (K={k})", flash, "flash", dict(num_steps=k)) for k in steps]
    if args.unpacked and flash.settings.t3_packed_fp16:
        for name, cls, tts, ckpt in (("ar", ChatterboxTTS, ar, random_checkpoint_dir()),
                                     ("flash", ChatterboxFlashTTS, flash, flash_checkpoint_dir())):
            unpacked = cls.from_local(ckpt, args.device, watermark=False,
                                      settings=replace(tts.settings, t3_packed_fp16=False))
            variants.append((f"{name} fast (unpacked)", unpacked, name, {}))
    run_once(ar, voices["ar"], 16, 0, {})  # warm-up: first calls allocate
    run_once(flash, voices["flash"], 16, 0, {})
    rows: dict[str, list[dict]] = {name: [] for name, *_ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, tts, voice, extra in order:
            rows[name].append(run_once(tts, voices[voice], args.tokens, r, extra))
            print(name, f"round {r}", {k: round(v, 3) for k, v in rows[name][-1].items()}, flush=True)
    print(f"\n{'variant':<22} {'t3 tok/s':>9} {'x ar':>6} {'RTF':>7} {'x ar':>6} {'first audio s':>14}")
    base = rows["ar fast"]
    for name, runs in rows.items():
        tok = statistics.median(x["t3_tok_s"] for x in runs)
        rtf = statistics.median(x["rtf"] for x in runs)
        # within-round ratios (same machine load), then their median
        tok_ratio = statistics.median(x["t3_tok_s"] / b["t3_tok_s"] for x, b in zip(runs, base))
        rtf_ratio = statistics.median(b["rtf"] / x["rtf"] for x, b in zip(runs, base))
        first = statistics.median(x["first_audio_s"] for x in runs)
        print(f"{name:<22} {tok:>9.1f} {tok_ratio:>6.2f} {rtf:>7.2f} {rtf_ratio:>6.2f} {first:>14.2f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(dict(machine=_machine(args.device), tokens=args.tokens, text_chars=len(TEXT),
                                    rows=rows)) + "\n")


if __name__ == "__main__":
    main()
