"""`faster-chatterbox bench`: one fixed job, timed stage by stage, optionally against upstream.

The job: prepare a voice from a 10 s synthetic clip, then speak a fixed sentence with exactly
`--tokens` decode steps (random weights never sample the stop token; real weights may stop sooner).
Each side runs in its own Python process, so peak memory and warm-up are measured separately.

Keys (seconds unless named otherwise): conditioning_s, t3_prefill_s, t3_tokens, t3_ms_per_token,
flow_encoder_s, cfm_steps, cfm_s, hift_s, generate_s, total_s (= conditioning_s + generate_s),
audio_s, rtf (= generate_s / audio_s), peak_rss_mb.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

TEXT = ("Faster Chatterbox reads this sentence aloud so that every stage of the pipeline can be timed, "
        "from the voice to the waveform.")
SEED = 0


class StageTimer:
    """Wall time spent in wrapped callables, by stage name; the first call of a stage may be split off."""

    def __init__(self, sync=lambda: None):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.last_output: dict[str, object] = {}
        self._sync = sync

    def wrap(self, obj, attr: str, stage: str, first_stage: str | None = None) -> None:
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            name = first_stage if first_stage and first_stage not in self.calls else stage
            self._sync()
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1
            self.last_output[name] = out
            return out

        setattr(obj, attr, timed)

    @contextmanager
    def stage(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _run_side(side: str, checkpoint: str, device: str, preset: str, tokens: int, voice: str) -> dict:
    """Runs in the child process: load, then time the job once."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timer = StageTimer(sync)
    if side == "ours":
        from faster_chatterbox.tts import ChatterboxTTS

        tts = ChatterboxTTS.from_local(checkpoint, device=device, preset=preset, watermark=False)
        # exactly `tokens` decode steps, no retries: random weights never stop and speak noise
        run = lambda: tts.synthesize(TEXT, max_new_tokens=tokens, token_budget_factor=None, max_retries=0)
    else:
        from chatterbox.tts import ChatterboxTTS as Upstream

        tts = Upstream.from_local(checkpoint, device)
        tts.watermarker.apply_watermark = lambda wav, sample_rate: wav
        t3_inference = tts.t3.inference
        tts.t3.inference = lambda **kw: t3_inference(**{**kw, "max_new_tokens": tokens})
        timer.wrap(tts.t3, "inference", "t3")
        run = lambda: tts.generate(TEXT)
    timer.wrap(tts.t3.tfmr, "forward", "t3_step", first_stage="t3_prefill")
    flow = tts.s3gen.flow
    timer.wrap(flow.encoder, "forward", "flow_encoder")
    timer.wrap(flow.decoder, "forward", "cfm")
    timer.wrap(flow.decoder.estimator, "forward", "cfm_step")
    timer.wrap(tts.s3gen.mel2wav, "inference", "hift")

    with timer.stage("conditioning"):
        tts.prepare_conditionals(voice, exaggeration=0.5)
    torch.manual_seed(SEED)
    with timer.stage("generate"):
        out = run()
    s, n = timer.seconds, timer.calls
    if side == "ours":
        n_tokens, t3_s, audio_s = len(out.chunks[0].tokens), out.timings["t3_s"], len(out.audio) / tts.sr
    else:
        n_tokens, t3_s, audio_s = timer.last_output["t3"].shape[-1], s["t3"], out.shape[-1] / tts.sr
    return {
        "conditioning_s": s["conditioning"],
        "t3_prefill_s": s["t3_prefill"],
        "t3_tokens": n_tokens,
        "t3_ms_per_token": 1000 * (t3_s - s["t3_prefill"]) / n_tokens,
        "flow_encoder_s": s["flow_encoder"],
        "cfm_steps": n["cfm_step"],
        "cfm_s": s["cfm"],
        "hift_s": s["hift"],
        "generate_s": s["generate"],
        "total_s": s["conditioning"] + s["generate"],
        "audio_s": audio_s,
        "rtf": s["generate"] / audio_s if audio_s else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def random_checkpoint_dir() -> Path:
    """A full-size random checkpoint, written once under the user cache and reused."""
    from .random_checkpoint import write_random_checkpoint

    cache = Path(os.environ.get("FASTER_CHATTERBOX_CACHE", Path.home() / ".cache" / "faster-chatterbox"))
    target = cache / "random-full-seed0"
    if not (target / "conds.pt").is_file():
        print(f"writing a full-size RANDOM-weight checkpoint to {target} (once, ~3 GB)...", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".random-full-", dir=cache))
        write_random_checkpoint(staging, seed=0)
        staging.rename(target)
    return target


def _spawn(side: str, checkpoint: Path, args) -> dict:
    cmd = [sys.executable, "-m", "faster_chatterbox.bench", side, str(checkpoint), args.device, args.preset,
           str(args.tokens), args.voice_path]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} benchmark run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_table(result: dict) -> None:
    sides = [("ours", result)] + ([("upstream", result["upstream"])] if "upstream" in result else [])
    keys = [k for k in result if isinstance(result[k], (int, float)) and k != "speedup"]
    header = f"{'stage':<18}" + "".join(f"{name:>12}" for name, _ in sides) + ("  speedup" if len(sides) > 1 else "")
    print(header)
    for key in keys:
        row = f"{key:<18}" + "".join(f"{r[key]:>12.3f}" if isinstance(r[key], float) else f"{r[key]:>12}" for _, r in sides)
        if key in result.get("speedup", {}):
            row += f"  {result['speedup'][key]:>6.2f}x"
        print(row)


def run_bench(args) -> dict:
    from .audio.io import write_audio
    from .audio.synthetic import synthetic_voice

    if args.tokens < 1:
        raise ValueError(f"--tokens must be at least 1, got {args.tokens}")
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif args.random_weights:
        checkpoint = random_checkpoint_dir()
    else:
        raise ValueError("give --checkpoint DIR or --random-weights")
    if (checkpoint / "RANDOM-WEIGHTS.txt").is_file():
        print(f"benchmarking RANDOM weights from {checkpoint}: timings are real, the audio is noise", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        args.voice_path = str(Path(tmp) / "voice.wav")
        write_audio(args.voice_path, synthetic_voice(10.0, 24000, seed=SEED), 24000)
        result = {"job": {"text_chars": len(TEXT), "tokens": args.tokens, "preset": args.preset,
                          "checkpoint": str(checkpoint)}}
        result.update(_spawn("ours", checkpoint, args))
        if args.compare_upstream:
            result["upstream"] = _spawn("upstream", checkpoint, args)
            result["speedup"] = {k: result["upstream"][k] / result[k] for k in
                                 ("conditioning_s", "t3_prefill_s", "t3_ms_per_token", "flow_encoder_s", "cfm_s",
                                  "hift_s", "generate_s", "total_s") if result[k] > 0}
    result["machine"] = _machine(args.device)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _print_table(result)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":  # the child process of one side
    side, checkpoint, device, preset, tokens, voice = sys.argv[1:7]
    if side == "upstream":
        import warnings

        warnings.filterwarnings("ignore")
    print(json.dumps(_run_side(side, checkpoint, device, preset, int(tokens), voice)))
