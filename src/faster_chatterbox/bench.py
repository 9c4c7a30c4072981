"""`faster-chatterbox bench`: fixed jobs, timed, optionally against upstream on the same checkpoint.

Scenario `stages` (default): prepare a voice from a 10 s synthetic clip, then speak a fixed sentence with
exactly `--tokens` decode steps (random weights never sample the stop token; real weights may stop sooner).
Keys (seconds unless named otherwise): conditioning_s, t3_prefill_s, t3_tokens, t3_ms_per_token,
flow_encoder_s, cfm_steps, cfm_s, hift_s, generate_s, total_s (= conditioning_s + generate_s),
audio_s, rtf (= generate_s / audio_s), peak_rss_mb.

Scenario `text`: the first `--chars` characters of the chapter in corpus/chapter.txt (cut at a sentence end),
spoken whole. Ours: `synthesize` with each chunk's token budget equal to its expected length, at least 50
(checks.token_budget; random weights never stop, so every chunk decodes exactly that many; no retries). Upstream: the same chunks (our
plan, after our normalisation) as sequential `generate` calls with the same budgets: the work a user of
upstream does by hand. Keys: chars, chunks, tokens, t3_s, s3gen_s, generate_s, audio_s, rtf, peak_rss_mb,
and with `--stream` ttfa_s (time to the first streamed piece, a second run) for ours.

Scenario `jobs`: `--jobs N` independent requests, each a different piece of the chapter of at most `--chars`
characters (budgets as in `text`), run one after another and then all at once from N threads (as N users
of one server would send them), in one process after a warm-up call. Ours at once: their T3 decodes share
the scheduler's continuously refilled batch. Upstream: one after another only (its model is not
thread-safe). Keys: jobs, chars, tokens, audio_s, sequential_s, concurrent_s, latency_p50_s, latency_p95_s,
latency_max_s (at once, from the common start), throughput (audio seconds per second, at once),
peak_rss_mb; upstream: sequential_s, and generate_s = sequential_s for the speed-up.

On CUDA every scenario adds gpu_util_mean_pct and gpu_util_max_pct (nvidia-smi samples every 200 ms over
the timed work) and cuda_peak_mb (torch's peak allocation). Each side runs in its own Python process, so
peak memory and warm-up are measured separately.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from .devices import native_bf16


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


class GpuUtilisation:
    """GPU utilisation (%) sampled every `interval_ms` while in use, from `nvidia-smi -lms` (no extra
    dependency); `summary()` is empty where nvidia-smi is missing or reported nothing."""

    def __init__(self, device: str = "cuda", interval_ms: int = 200, command: list[str] | None = None):
        index = device.split(":")[1] if ":" in device else "0"
        self.command = command or ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                   "-i", index, "-lms", str(interval_ms)]
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuUtilisation:
        try:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._reader.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {"gpu_util_mean_pct": sum(self.samples) / len(self.samples), "gpu_util_max_pct": max(self.samples),
                "gpu_util_samples": len(self.samples)}


@contextmanager
def device_watch(device: str, out: dict):
    """Adds GPU utilisation and peak CUDA memory of the block to `out` when `device` is CUDA."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    torch.cuda.reset_peak_memory_stats()
    with GpuUtilisation(device) as gpu:
        yield
    out.update(gpu.summary(), cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20)


CHAPTER = Path(__file__).resolve().parents[2] / "corpus" / "chapter.txt"


def chapter_text(chars: int) -> str:
    """The corpus chapter up to the first sentence end at or after `chars` characters (repeated if short)."""
    if not CHAPTER.is_file():
        raise ValueError(f"the text scenario reads {CHAPTER} (a source checkout): not found")
    lines = [ln.strip() for ln in CHAPTER.read_text(encoding="utf-8").splitlines()]
    text = "\n\n".join(ln for ln in lines if ln and not ln.startswith("#"))
    while len(text) < chars + 1000:
        text = text + "\n\n" + text
    ends = [i for i in (text.find(end, chars - 1) for end in (". ", ".\n", "? ", "! ")) if i >= 0]
    return text[: min(ends) + 1]


def _upstream(checkpoint: str, device: str, budget: dict):
    """Upstream's model, unwatermarked, its T3 capped at budget["n"] decode steps (set before each call;
    random weights never sample the stop token, so it decodes exactly that many)."""
    from chatterbox.tts import ChatterboxTTS as Upstream

    tts = Upstream.from_local(checkpoint, device)
    tts.watermarker.apply_watermark = lambda wav, sample_rate: wav
    t3_inference = tts.t3.inference
    tts.t3.inference = lambda **kw: t3_inference(**{**kw, "max_new_tokens": budget["n"]})
    return tts


def _run_text(side: str, checkpoint: str, device: str, preset: str, decoder: str, chars: int, voice: str,
              stream: bool) -> dict:
    """The text scenario, in the child process."""
    import torch

    from .checks import token_budget
    from .tts import ChatterboxTTS

    text, watch = chapter_text(chars), {}
    ours = ChatterboxTTS.from_local(checkpoint, device=device, preset=preset, watermark=False,
                                    decoder=decoder) if side == "ours" else None
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if side == "ours":
        ours.prepare_conditionals(voice)
        sync()
        with device_watch(device, watch):
            start = time.perf_counter()
            result = ours.synthesize(text, seed=SEED, token_budget_factor=1.0, max_retries=0, progress=False)
            sync()
        out = {"generate_s": time.perf_counter() - start, "t3_s": result.timings["t3_s"],
               "s3gen_s": result.timings["s3gen_s"], "chunks": len(result.chunks),
               "tokens": sum(c.t3_steps for c in result.chunks), "audio_s": len(result.audio) / ours.sr}
        if stream:
            start = time.perf_counter()
            pieces = ours.generate_stream(text, seed=SEED, token_budget_factor=1.0, max_retries=0)
            next(pieces)
            out["ttfa_s"] = time.perf_counter() - start
            pieces.close()
    else:
        from .pipeline import plan_chunks
        from .settings import call_settings, engine_settings

        # chunks of up to 300 characters, one after another: upstream's users' way past its 40 s cap (ours
        # spreads a text's sentences over its batch rows: pack_chunks(rows=...), no gain for sequential calls)
        plan = plan_chunks(text, replace(call_settings(engine_settings(preset, device)), chunk_rows=None))
        budget = {}
        tts = _upstream(checkpoint, device, budget)
        tts.prepare_conditionals(voice)
        timer = StageTimer(sync)
        timer.wrap(tts.t3, "inference", "t3")
        timer.wrap(tts.s3gen, "inference", "s3gen")
        torch.manual_seed(SEED)
        audio, tokens = 0, 0
        with device_watch(device, watch), timer.stage("generate"):
            for chunk in plan:
                budget["n"] = token_budget(chunk.text, 1000, factor=1.0)  # what ours gives the chunk
                audio += tts.generate(chunk.text).shape[-1]
                tokens += timer.last_output["t3"].shape[-1]
        out = {"generate_s": timer.seconds["generate"], "t3_s": timer.seconds["t3"], "s3gen_s": timer.seconds["s3gen"],
               "chunks": len(plan), "tokens": tokens, "audio_s": audio / tts.sr}
    out.update(chars=len(text), rtf=out["generate_s"] / out["audio_s"],
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **watch)
    return out


def job_texts(jobs: int, chars: int) -> list[str]:
    """`jobs` different pieces of the corpus chapter, each at most `chars` characters (sentences packed)."""
    from .text.chunking import pack_chunks

    pieces = [c.text for c in pack_chunks(chapter_text(max(chars, 1) * jobs + 2000), chars)]
    return [pieces[k % len(pieces)] for k in range(jobs)]


def _run_jobs(side: str, checkpoint: str, device: str, preset: str, decoder: str, jobs: int, chars: int,
              voice: str) -> dict:
    """The jobs scenario, in the child process."""
    import numpy as np
    import torch

    from .checks import token_budget
    from .tts import ChatterboxTTS

    texts, watch = job_texts(jobs, chars), {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if side == "ours":
        tts = ChatterboxTTS.from_local(checkpoint, device=device, preset=preset, watermark=False, decoder=decoder)
        tts.prepare_conditionals(voice)
        kw = dict(token_budget_factor=1.0, max_retries=0, progress=False)

        def one(k: int) -> tuple[int, int]:
            result = tts.synthesize(texts[k], seed=SEED + k, **kw)
            return len(result.audio), sum(c.t3_steps for c in result.chunks)
    else:
        budget = {}
        tts = _upstream(checkpoint, device, budget)
        tts.prepare_conditionals(voice)
        timer = StageTimer()
        timer.wrap(tts.t3, "inference", "t3")

        def one(k: int) -> tuple[int, int]:
            budget["n"] = token_budget(texts[k], 1000, factor=1.0)  # what ours gives the request
            torch.manual_seed(SEED + k)
            return tts.generate(texts[k]).shape[-1], timer.last_output["t3"].shape[-1]

    one(0)  # warm-up
    sync()
    start = time.perf_counter()
    with device_watch(device, watch):  # ours: replaced by the at-once run's below
        done = [one(k) for k in range(jobs)]
        sync()
    out = {"jobs": jobs, "chars": sum(map(len, texts)), "tokens": sum(t for _, t in done),
           "audio_s": sum(n for n, _ in done) / tts.sr, "sequential_s": time.perf_counter() - start}
    if side == "ours":
        latencies = [0.0] * jobs
        begin = threading.Barrier(jobs + 1)

        def user(k: int) -> None:
            begin.wait()
            one(k)
            latencies[k] = time.perf_counter() - start

        threads = [threading.Thread(target=user, args=(k,)) for k in range(jobs)]
        for thread in threads:
            thread.start()
        with device_watch(device, watch):
            begin.wait()
            start = time.perf_counter()
            for thread in threads:
                thread.join()
            sync()
        out.update(concurrent_s=max(latencies), latency_p50_s=float(np.percentile(latencies, 50)),
                   latency_p95_s=float(np.percentile(latencies, 95)), latency_max_s=max(latencies),
                   throughput=out["audio_s"] / max(latencies))
        out["generate_s"] = out["concurrent_s"]
    else:
        out["generate_s"] = out["sequential_s"]
    out.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **watch)
    return out


def _run_side(side: str, checkpoint: str, device: str, preset: str, decoder: str, tokens: int, voice: str) -> dict:
    """The stages scenario, in the child process: load, then time the job once."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timer = StageTimer(sync)
    if side == "ours":
        from faster_chatterbox.tts import ChatterboxTTS

        tts = ChatterboxTTS.from_local(checkpoint, device=device, preset=preset, watermark=False, decoder=decoder)
        # exactly `tokens` decode steps, no retries: random weights never stop and speak noise
        run = lambda: tts.synthesize(TEXT, max_new_tokens=tokens, token_budget_factor=None, max_retries=0)
    else:
        tts = _upstream(checkpoint, device, {"n": tokens})
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
    watch = {}
    with device_watch(device, watch), timer.stage("generate"):
        out = run()
    s, n = timer.seconds, timer.calls
    if side == "ours":
        n_tokens, t3_s, audio_s = out.chunks[0].t3_steps, out.timings["t3_s"], len(out.audio) / tts.sr
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
        **watch,
    }


def _machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu"))}  # what the CPU's settings resolve by
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def random_checkpoint_dir() -> Path:
    """A full-size random English checkpoint, written once under the user cache and reused."""
    from .family import random_checkpoint

    return random_checkpoint("full")


def _oracle_python() -> str:
    """Upstream runs with the python of the oracle's own venv (scripts/install-oracle.sh), never in ours."""
    venv = os.environ.get("FASTER_CHATTERBOX_ORACLE_VENV", Path(__file__).resolve().parents[2] / ".oracle-venv")
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise ValueError(f"--compare-upstream needs the oracle's venv, {python} does not exist: "
                         "bash scripts/install-oracle.sh (or set FASTER_CHATTERBOX_ORACLE_VENV)")
    return str(python)


def _spawn(side: str, checkpoint: Path, args) -> dict:
    python = _oracle_python() if side == "upstream" else sys.executable
    cmd = [python, "-m", "faster_chatterbox.bench", side, str(checkpoint), args.device, args.preset,
           str(args.tokens), args.voice_path, args.scenario, str(args.chars), str(int(args.stream)), args.decoder,
           str(args.jobs)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} benchmark run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(value) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:>12.3f}" if isinstance(value, float) else f"{value:>12}"


def _print_table(result: dict) -> None:
    sides = [("ours", result)] + ([("upstream", result["upstream"])] if "upstream" in result else [])
    keys = [k for k in result if isinstance(result[k], (int, float)) and k != "speedup"]
    header = f"{'stage':<18}" + "".join(f"{name:>12}" for name, _ in sides) + ("  speedup" if len(sides) > 1 else "")
    print(header)
    for key in keys:
        row = f"{key:<18}" + "".join(_cell(r.get(key)) for _, r in sides)
        if key in result.get("speedup", {}):
            row += f"  {result['speedup'][key]:>6.2f}x"
        print(row)


def run_bench(args) -> dict:
    from .audio.io import write_audio
    from .audio.synthetic import synthetic_voice

    if args.tokens < 1:
        raise ValueError(f"--tokens must be at least 1, got {args.tokens}")
    if args.scenario in ("text", "jobs"):
        chapter_text(args.chars)  # fails early without the corpus
        if args.chars < 20:
            raise ValueError(f"--chars must be at least 20, got {args.chars}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.compare_upstream:
        _oracle_python()  # fails now, not after our side's run
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
        job = {"stages": {"text_chars": len(TEXT), "tokens": args.tokens}, "text": {"chars": args.chars},
               "jobs": {"jobs": args.jobs, "chars": args.chars}}[args.scenario]
        result = {"job": {"scenario": args.scenario, **job, "preset": args.preset, "decoder": args.decoder,
                          "checkpoint": str(checkpoint)}}
        result.update(_spawn("ours", checkpoint, args))
        if args.compare_upstream:
            result["upstream"] = _spawn("upstream", checkpoint, args)
            keys = {"stages": ("conditioning_s", "t3_prefill_s", "t3_ms_per_token", "flow_encoder_s", "cfm_s",
                               "hift_s", "generate_s", "total_s"),
                    "text": ("t3_s", "s3gen_s", "generate_s"), "jobs": ("sequential_s", "generate_s")}[args.scenario]
            result["speedup"] = {k: result["upstream"][k] / result[k] for k in keys if result[k] > 0}
    result["machine"] = _machine(args.device)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if args.json:  # first: a result is never lost to a display problem
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    _print_table(result)
    return result


if __name__ == "__main__":  # the child process of one side
    side, checkpoint, device, preset, tokens, voice, scenario, chars, stream, decoder, jobs = sys.argv[1:12]
    if side == "upstream":
        import warnings

        warnings.filterwarnings("ignore")
    if scenario == "text":
        print(json.dumps(_run_text(side, checkpoint, device, preset, decoder, int(chars), voice, stream == "1")))
    elif scenario == "jobs":
        print(json.dumps(_run_jobs(side, checkpoint, device, preset, decoder, int(jobs), int(chars), voice)))
    else:
        print(json.dumps(_run_side(side, checkpoint, device, preset, decoder, int(tokens), voice)))
