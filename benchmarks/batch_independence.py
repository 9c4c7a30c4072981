"""Does a chunk's T3 output depend on its batch mates? The same 16 requests (own generators) decoded one
by one and in batches of 8, per T3 precision: how many token sequences are identical, and where the first
difference falls.

    python benchmarks/batch_independence.py CKPT_DIR [--tokens 150]

float32 batches are exact (a row's logits do not depend on the others). bf16 and int8 kernels pick their
blocking (int8: even their kernel, PACKED_MAX_ROWS) by the number of rows, so a row's logits round
differently alone than in a batch; a draw that falls near a tie then flips, and the sequences part there.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from faster_chatterbox.engine.batch_decode import DecodeRequest, generate_speech_tokens_batch
from faster_chatterbox.settings import engine_settings, stream_seed
from faster_chatterbox.tts import ChatterboxTTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=150)
    args = parser.parse_args()
    texts = [f"This is sentence number {i}, which goes on for a while {'and on ' * (i % 5)}." for i in range(16)]
    for precision in ("fp32", "bf16", "int8"):
        settings = replace(engine_settings("fast", "cpu"), t3_precision=precision,
                           kv_dtype=None if precision == "fp32" else torch.float32)
        with ChatterboxTTS.from_local(args.checkpoint, device="cpu", settings=settings, watermark=False) as tts:
            def requests():
                return [DecodeRequest(tts.conds.t3, tts.text_tokens(t), max_new_tokens=args.tokens,
                                      generator=torch.Generator().manual_seed(stream_seed(1, "t3", i, 0)))
                        for i, t in enumerate(texts)]

            with torch.inference_mode():
                alone = [generate_speech_tokens_batch(tts.t3, [r])[0] for r in requests()]
                r = requests()
                batched = generate_speech_tokens_batch(tts.t3, r[:8]) + generate_speech_tokens_batch(tts.t3, r[8:])
        same = sum(torch.equal(a, b) for a, b in zip(alone, batched))
        first = [next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), None) for a, b in zip(alone, batched)]
        parted = sorted(k for k in first if k is not None)
        print(f"{precision}: {same}/16 identical over {args.tokens} tokens; first differing step of the others: {parted}")


if __name__ == "__main__":
    main()
