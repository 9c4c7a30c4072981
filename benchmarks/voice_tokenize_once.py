"""The fast presets' single S3 tokenizer pass per voice: how far T3's prompt tokens move.

Upstream tokenizes a reference clip twice: the first 10 s for the decoder's prompt and the first 6 s for
T3's speech prompt (150 tokens). The fast presets take T3's prompt from the 10 s pass instead. The
tokenizer attends over the whole clip, so the first 6 s can tokenize differently with 4 more seconds
after them. This measures the share of T3 prompt tokens that change, on synthetic voices (and on real
clips with --clips), with the checkpoint's tokenizer.

    python benchmarks/voice_tokenize_once.py [--checkpoint DIR] [--clips a.wav b.wav ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from faster_chatterbox.audio.io import load_audio
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.bench import random_checkpoint_dir
from faster_chatterbox.tts import ChatterboxTTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--clips", nargs="*", default=[])
    ap.add_argument("--voices", type=int, default=4, help="synthetic voices (12 s each)")
    args = ap.parse_args()
    exact = ChatterboxTTS.from_local(args.checkpoint or random_checkpoint_dir(), device="cpu", preset="exact",
                                     watermark=False)
    clips = [(f"synthetic voice {seed}", synthetic_voice(12.0, 24000, seed=seed)) for seed in range(args.voices)]
    clips += [(clip, load_audio(clip, 24000)) for clip in args.clips]
    rates = []
    for name, wav in clips:
        voice = exact.conditionals_from_wav(wav, 24000)  # upstream's: a second pass over the first 6 s
        twice = voice.t3.cond_prompt_speech_tokens
        once = voice.gen["prompt_token"][:, : twice.shape[1]]  # what the fast presets take (the decoder's pass)
        changed = float((once != twice).float().mean())
        rates.append(changed)
        print(f"{name}: {changed:.1%} of {once.shape[1]} T3 prompt tokens differ")
    print(f"mean: {np.mean(rates):.1%}")


if __name__ == "__main__":
    main()
