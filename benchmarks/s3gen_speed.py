"""S3Gen speed side by side with upstream: CFM time and whole S3Gen time (encoder + CFM + HiFT) per decoder variant.

    .oracle-venv/bin/python benchmarks/s3gen_speed.py --threads 2 --md benchmarks/s3gen_speed.md

Upstream runs in this process, so the interpreter is the oracle venv's (scripts/install-oracle.sh).

One process, the variants interleaved over `--rounds` rounds (alternately reversed; medians reported), all on
the same checkpoint (default: the full-size random one of `init-random`), the same 100 speech tokens and the same 10 s voice.
Every variant of ours starts from the same noise as upstream (upstream draws it from the seeded global RNG),
and HiFT's random draws are re-seeded identically, so the mel/waveform distances to `exact` measure the
variant itself (random weights: ODE truncation and rounding error, not perceived quality).
The meanflow decoder is a different network: its distance to `exact` is not a quality figure.
Then 8 chunks (50-150 tokens, two voices) through `inference_batch` against 8 `inference` calls.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checkpoint import load_weights, read_safetensors, skip_weight_init
from faster_chatterbox.models.s3gen import MEANFLOW_FILE, S3GEN_SR, S3Gen, S3GenConfig, meanflow_config, trim_reference

DEFAULT_CKPT = Path.home() / ".cache/faster-chatterbox/random-full-seed0"
FAST = dict(n_timesteps=8, solver="ab2", schedule="sway", sway_coef=-0.6)
FASTEST = dict(FAST, n_timesteps=6)
SEED = 1234


def load_ours(ckpt: Path, cfg: S3GenConfig, file: str, dtype: torch.dtype) -> S3Gen:
    with skip_weight_init():
        model = S3Gen(cfg)
    state = read_safetensors(ckpt / file)
    if cfg.flow.estimator.meanflow and file != MEANFLOW_FILE:  # no meanflow file: base weights + a random mixer
        mixer = model.flow.decoder.estimator.time_embed_mixer.weight
        state["flow.decoder.estimator.time_embed_mixer.weight"] = torch.randn(mixer.shape) / mixer.size(1) ** 0.5
    load_weights(model, state, ckpt / file, ignore_unexpected=True)
    model.mel2wav.fold_weight_norm()
    model.eval().set_decoder_dtype(dtype)
    return model


def load_upstream(ckpt: Path):
    from chatterbox.models.s3gen import S3Gen as UpS3Gen

    with skip_weight_init():
        up = UpS3Gen()
    up.load_state_dict(read_safetensors(ckpt / "s3gen.safetensors"), strict=False)
    return up.eval()


class Timer:
    """Accumulates the wall time of one module's forward (the CFM: the flow's decoder)."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = 0.0
        forward = module.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return out

        module.forward = timed


def capture_mel(model: S3Gen) -> list:
    """Record the mels our S3Gen hands to HiFT (still running HiFT)."""
    mels, vocode = [], model._vocode_rows

    def recording(rows):
        mels[:] = [row.float() for row in rows]
        return vocode(rows)

    model._vocode_rows = recording
    return mels


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_single(variants: dict, tokens: torch.Tensor, ref: dict, noise: torch.Tensor, rounds: int) -> dict:
    results = {name: dict(cfm=[], total=[]) for name in variants}
    for i in range(rounds):
        order = list(variants.items())
        for name, (model, kwargs, prompt_s) in order if i % 2 == 0 else order[::-1]:  # against load drift
            timer = model.timer
            timer.seconds = 0.0
            r = ref if prompt_s is None else trim_reference(ref, prompt_s)
            start = time.perf_counter()
            with torch.inference_mode():
                torch.manual_seed(SEED)
                if name == "upstream":
                    wav, _ = model.inference(tokens, ref_dict=dict(r), n_cfm_timesteps=10)  # draws `noise` first
                else:
                    torch.randn(noise.shape)  # leave the RNG where upstream's noise draw leaves it, for HiFT
                    n_prompt = 2 * r["prompt_token"].size(1)  # a shorter prompt keeps the target frames' noise
                    row_noise = torch.cat([noise[:, :, :n_prompt], noise[:, :, -2 * tokens.numel():]], dim=2)
                    wav = model.inference(tokens, r, noise=row_noise, **kwargs)
                mel = model.mels[0]
            total = time.perf_counter() - start
            results[name]["cfm"].append(timer.seconds)
            results[name]["total"].append(total)
            results[name]["mel"], results[name]["wav"] = mel.float(), wav.float()
            print(f"{name}: cfm {timer.seconds:.2f} s, total {total:.2f} s", flush=True)
    return results


def run_batch(model: S3Gen, refs: list[dict], lengths: list[int], kwargs: dict, rounds: int) -> dict:
    g = torch.Generator().manual_seed(SEED)
    chunks = [torch.randint(0, 6561, (n,), generator=g) for n in lengths]
    voice = [refs[i % len(refs)] for i in range(len(lengths))]
    noises = [torch.randn(1, 80, 2 * (v["prompt_token"].size(1) + n), generator=g) for v, n in zip(voice, lengths)]
    audio_s = sum(lengths) * 2 * 480 / S3GEN_SR
    out = dict(unbatched=[], batched=[], audio_s=audio_s)
    for _ in range(rounds):
        with torch.inference_mode():
            start = time.perf_counter()
            single = []
            for c, v, n in zip(chunks, voice, noises):
                model.inference(c, v, noise=n, **kwargs)
                single.append(model.mels[0])
            out["unbatched"].append(time.perf_counter() - start)
            print(f"8 unbatched: {out['unbatched'][-1]:.2f} s", flush=True)
            start = time.perf_counter()
            model.inference_batch(chunks, voice, noises=noises, **kwargs)
            out["batched"].append(time.perf_counter() - start)
            print(f"batched: {out['batched'][-1]:.2f} s", flush=True)
            out["max_row_mel_rel_l2"] = max(rel_l2(b, s) for b, s in zip(model.mels, single))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--no-batch", action="store_true", help="skip the 8-chunk batch measurement")
    p.add_argument("--md", type=Path, help="append the tables to this markdown file")
    p.add_argument("--json", type=Path, help="append the raw results as one JSON line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = args.checkpoint
    fp32 = load_ours(ckpt, S3GenConfig(), "s3gen.safetensors", torch.float32)
    bf16 = load_ours(ckpt, S3GenConfig(), "s3gen.safetensors", torch.bfloat16)
    mf_file = MEANFLOW_FILE if (ckpt / MEANFLOW_FILE).is_file() else "s3gen.safetensors"
    mf32 = load_ours(ckpt, meanflow_config(), mf_file, torch.float32)
    mf16 = load_ours(ckpt, meanflow_config(), mf_file, torch.bfloat16)
    up = load_upstream(ckpt)
    for model in (fp32, bf16, mf32, mf16):
        model.timer, model.mels = Timer(model.flow.decoder), capture_mel(model)
    up.timer, up.mels = Timer(up.flow.decoder), []
    hift = up.mel2wav.inference
    up.mel2wav.inference = lambda speech_feat, **kw: (up.mels.__setitem__(slice(None), [speech_feat])
                                                      or hift(speech_feat=speech_feat, **kw))

    ref = torch.load(ckpt / "conds.pt", weights_only=True)["gen"]
    tokens = torch.randint(0, 6561, (args.tokens,), generator=torch.Generator().manual_seed(SEED))
    torch.manual_seed(SEED)  # upstream's flow draws its noise first thing: the same draw for ours
    noise = torch.randn(1, 80, 2 * (ref["prompt_token"].size(1) + args.tokens))

    variants = {
        "upstream": (up, {}, None),
        "exact (fp32, euler 10, CFG)": (fp32, {}, None),
        "bf16, euler 10": (bf16, {}, None),
        "fast fp32 (ab2 8, sway -0.6)": (fp32, FAST, None),
        "fast bf16": (bf16, FAST, None),
        "fastest bf16 (ab2 6)": (bf16, FASTEST, None),
        "CFG-free bf16 (ab2 8)": (bf16, dict(FAST, cfg_rate=0.0), None),
        "meanflow fp32 (2 steps)": (mf32, {}, None),
        "meanflow bf16 (2 steps)": (mf16, {}, None),
        "exact, prompt 5 s": (fp32, {}, 5.0),
        "exact, prompt 3 s": (fp32, {}, 3.0),
        "fast bf16, prompt 5 s": (bf16, FAST, 5.0),
    }
    results = run_single(variants, tokens, ref, noise, args.rounds)
    exact = results["exact (fp32, euler 10, CFG)"]
    up_res = results["upstream"]
    med = {name: (statistics.median(r["cfm"]), statistics.median(r["total"])) for name, r in results.items()}
    rows = []
    for name, r in results.items():
        cfm, total = med[name]
        rows.append(dict(variant=name, cfm_s=round(cfm, 2), s3gen_s=round(total, 2),
                         cfm_speedup=round(med["upstream"][0] / cfm, 2), s3gen_speedup=round(med["upstream"][1] / total, 2),
                         mel_rel_l2_vs_exact=rel_l2(r["mel"], exact["mel"]),
                         wav_rel_l2_vs_exact=rel_l2(r["wav"], exact["wav"]) if name != "upstream" else None))
    up_vs_exact = rel_l2(exact["mel"], up_res["mel"])

    batch = None
    if not args.no_batch:
        second = bf16.embed_ref(torch.from_numpy(synthetic_voice(8.0, S3GEN_SR, seed=1)), S3GEN_SR)
        batch = run_batch(bf16, [ref, second], [50, 64, 79, 93, 107, 121, 136, 150], FAST, args.rounds)

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    date = datetime.date.today().isoformat()
    lines = [f"### {args.threads} thread(s), {date}", "",
             f"`python benchmarks/s3gen_speed.py --threads {args.threads} --rounds {args.rounds}` on {machine}; "
             f"checkpoint {ckpt.name}; {args.tokens} tokens ({args.tokens * 0.04:.1f} s) after a "
             f"{ref['prompt_token'].size(1) * 0.04:.1f} s prompt; medians of {args.rounds} round(s). "
             f"Upstream vs exact mel rel. L2: {up_vs_exact:.1e}.", "",
             "| variant | CFM s | S3Gen s | CFM speed-up | S3Gen speed-up | mel rel L2 vs exact | wav rel L2 vs exact |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wav = "" if r["wav_rel_l2_vs_exact"] is None else f"{r['wav_rel_l2_vs_exact']:.1e}"
        lines.append(f"| {r['variant']} | {r['cfm_s']:.2f} | {r['s3gen_s']:.2f} | {r['cfm_speedup']:.2f}x | "
                     f"{r['s3gen_speedup']:.2f}x | {r['mel_rel_l2_vs_exact']:.1e} | {wav} |")
    if batch:
        ub, b = statistics.median(batch["unbatched"]), statistics.median(batch["batched"])
        lines += ["", f"8 chunks (50-150 tokens, {batch['audio_s']:.1f} s of audio, two voices with 10 s and 8 s prompts), "
                  f"fast bf16: 8 `inference` calls {ub:.1f} s = {batch['audio_s'] / ub:.2f} audio s/s; one "
                  f"`inference_batch` {b:.1f} s = {batch['audio_s'] / b:.2f} audio s/s ({ub / b:.2f}x); "
                  f"max row mel rel. L2 batched vs unbatched {batch['max_row_mel_rel_l2']:.1e}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with args.md.open("a") as f:
            f.write("\n" + text)
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(dict(date=date, machine=machine, threads=args.threads, rounds=args.rounds, rows=rows,
                                    upstream_vs_exact=up_vs_exact, batch=batch and {k: v for k, v in batch.items()})) + "\n")


if __name__ == "__main__":
    main()
