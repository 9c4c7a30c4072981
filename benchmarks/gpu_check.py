"""One prepared GPU check: parity and speed of this project on one CUDA device, in a fixed time budget.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--budget-s 420] [--checkpoint DIR]

Normally started by `bash scripts/gpu-check.sh --run` (benchmarks/gpu_check.md). Sections, in order, each
timed, each guarded by the budget (skipped with a note when too little time is left) and wrapped so that one
failing section does not lose the others; the JSON is rewritten after every section, so a run killed at its
limit still leaves what it measured:

  machine        python, torch, GPU name
  checkpoint     a random full-size checkpoint (write_random_checkpoint(dir, seed=0); --dry-run: small=True)
  parity_fp32    float32 T3: the exact path's tokens (generate_speech_tokens, one sequence) against the
                 batched path's (generate_speech_tokens_batch, rows of 8) for the same generators: identical?
  parity_bf16    the fast preset's bf16 T3: each request alone vs in a batch of 8: agreement rate
  t3_speed       T3 tokens/s: the exact path single stream, then batched at 1/8/32/64 rows
  t3_static      T3 tokens/s of the static-cache batch (engine/static_batch.py) at 1 and 8 requests: the eager
                 step against the captured one (CUDA graphs; CPU: eager only), and their token agreement
  s3gen_speed    S3Gen (flow + HiFT) seconds per audio second, one chunk and a render batch of 8
  text_fast / text_fastest  a 1,200-character text end to end (synthesize; t3_s, s3gen_s, total_s)
  jobs_16 / jobs_64         N concurrent synthesize calls from N threads (as `faster-chatterbox bench`'s jobs)
  flash          Chatterbox-Flash (block-diffusion T3, its own random checkpoint) against autoregressive `fast`
                 on one 300-character text, each chunk capped at the same tokens: T3 tokens/s, RTF and
                 seconds to the first streamed audio, Flash at K = 5 and 3 denoising steps per block

Random weights never sample the stop token, so every decode runs its whole token budget: timings are
real, the audio is noise. On CPU (--dry-run) the CUDA-only parts (synchronize, memory stats, nvidia-smi)
are no-ops; the dry run uses the small random checkpoint and tiny sizes (tests/test_gpu_check.py).
Writes gpu_check.json and gpu_check.md into --out; prints the JSON summary and the markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from faster_chatterbox.bench import chapter_text, device_watch, job_texts
from faster_chatterbox.engine.batch_decode import DecodeRequest, decode_alone, generate_speech_tokens_batch
from faster_chatterbox.engine.static_batch import StaticDecodeBatch
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.settings import call_settings, engine_settings, stream_seed
from faster_chatterbox.tts import ChatterboxTTS
from faster_chatterbox.tts_flash import ChatterboxFlashTTS

FULL = dict(parity_requests=16, parity_tokens=100, speed_tokens=200, rows=(8, 32, 64), s3gen_tokens=250,
            s3gen_chunks=8, chars=1200, jobs=(16, 64), job_chars=300, flash_chars=300, flash_tokens=96)
DRY = dict(parity_requests=3, parity_tokens=10, speed_tokens=10, rows=(2,), s3gen_tokens=5, s3gen_chunks=2,
           chars=40, jobs=(2,), job_chars=40, flash_chars=60, flash_tokens=8)
# the dry run's S3Gen: one flow step (the CFM over the 10 s voice prompt is most of a CPU render) and 4 tokens
DRY_SYNTH = dict(n_timesteps=1, max_new_tokens=4, token_budget_factor=None)
DRY_RENDER = dict(n_timesteps=1, prompt_seconds=1.0)
# seconds a section needs at least (full run); a section starts only with this much budget left
NEEDS = {"checkpoint": 60, "parity_fp32": 40, "parity_bf16": 30, "t3_speed": 60, "t3_static": 40, "s3gen_speed": 20,
         "text_fast": 30, "text_fastest": 30, "jobs_16": 30, "jobs_64": 45, "flash": 90}


class Check:
    def __init__(self, args):
        self.args, self.start = args, time.perf_counter()
        self.device = "cpu" if args.dry_run else "cuda"
        self.cuda = self.device == "cuda"
        self.sizes = DRY if args.dry_run else FULL
        # each chunk's token budget its expected length (checks.token_budget): random weights never stop
        self.synth = DRY_SYNTH if args.dry_run else dict(token_budget_factor=1.0)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = {"dry_run": bool(args.dry_run), "budget_s": args.budget_s, "sections": {}, "skipped": {},
                       "errors": {}, "random_weights": True}
        self.ckpt: Path | None = Path(args.checkpoint) if args.checkpoint else None
        self._tts: dict[str, ChatterboxTTS] = {}
        self.wrote_ckpt = False

    # ---- plumbing -------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def section(self, name: str, fn) -> None:
        need = 0 if self.args.dry_run else NEEDS.get(name, 20)
        if self.left() < need:
            self.result["skipped"][name] = f"skipped: {self.left():.0f} s of the budget left, it needs ~{need} s"
            print(f"[gpu-check] {name}: {self.result['skipped'][name]}", file=sys.stderr, flush=True)
            self.save()
            return
        print(f"[gpu-check] {name} ({self.left():.0f} s left)...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            out = fn()
            out["section_s"] = time.perf_counter() - t0
            if self.cuda:
                out.setdefault("cuda_peak_mb", torch.cuda.max_memory_allocated() / 2**20)
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.result["sections"][name] = out
        except Exception as exc:  # one failing section never loses the others
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            print(f"[gpu-check] {name} FAILED: {self.result['errors'][name]}", file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
        self.save()

    def save(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.start
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.result))

    def tts(self, key: str, load=None) -> ChatterboxTTS:
        """One loaded model at a time (the full-size ones take GBs): key 'fp32', 'fast' or 'fastest', or any
        key with `load()` making its model."""
        if key not in self._tts:
            for old in list(self._tts):
                self._tts.pop(old).close()
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
            if self.ckpt is None:
                raise RuntimeError("no checkpoint (its section failed)")
            if load is not None:
                self._tts[key] = load()
                return self._tts[key]
            if key == "fp32":
                settings = replace(engine_settings("fast", self.device), t3_precision="fp32", kv_dtype=None)
            else:
                settings = engine_settings(key, self.device)
            self._tts[key] = ChatterboxTTS.from_local(self.ckpt, device=self.device, settings=settings,
                                                      watermark=False)
        return self._tts[key]

    def requests(self, tts: ChatterboxTTS, n: int, tokens: int) -> list[DecodeRequest]:
        texts = [f"This is sentence number {i}, which goes on for a while {'and on ' * (i % 5)}." for i in range(n)]
        return [DecodeRequest(tts.conds.t3, tts.text_tokens(t), max_new_tokens=tokens,
                              generator=torch.Generator(device=self.device).manual_seed(stream_seed(1, "t3", i, 0)))
                for i, t in enumerate(texts)]

    # ---- sections -------------------------------------------------------------------------
    def machine(self) -> dict:
        info = {"python": platform.python_version(), "torch": torch.__version__, "device": self.device,
                "platform": platform.platform(), "cuda_available": torch.cuda.is_available()}
        if self.cuda:
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False: no GPU for this run (use --dry-run on CPU)")
            info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                        gpu_memory_mb=torch.cuda.get_device_properties(0).total_memory / 2**20)
        return info

    def checkpoint(self) -> dict:
        if self.ckpt is not None:
            return {"written_s": 0.0, "path": str(self.ckpt)}
        target = Path(tempfile.mkdtemp(prefix="gpu-check-ckpt-"))
        t0 = time.perf_counter()
        write_random_checkpoint(target, seed=0, small=self.args.dry_run)
        self.ckpt, self.wrote_ckpt = target, True
        size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
        return {"written_s": time.perf_counter() - t0, "size_mb": size, "path": str(target)}

    def _compare(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
        same = sum(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))
        first = sorted(k for k in (next((k for k in range(min(len(x), len(y))) if x[k] != y[k]), None)
                                   for x, y in zip(a, b)) if k is not None)
        return {"requests": len(a), "identical": same, "identical_rate": same / len(a),
                "first_differing_steps": first}

    def parity_fp32(self) -> dict:
        tts, n, tokens = self.tts("fp32"), self.sizes["parity_requests"], self.sizes["parity_tokens"]
        with torch.inference_mode():
            exact = [decode_alone(tts.t3, r) for r in self.requests(tts, n, tokens)]
            r = self.requests(tts, n, tokens)
            batched = [t for k in range(0, n, 8) for t in generate_speech_tokens_batch(tts.t3, r[k : k + 8])]
        out = self._compare(exact, batched)
        out.update(tokens=tokens, all_identical=out["identical"] == n)
        return out

    def parity_bf16(self) -> dict:
        tts, n, tokens = self.tts("fast"), self.sizes["parity_requests"], self.sizes["parity_tokens"]
        with torch.inference_mode():
            alone = [generate_speech_tokens_batch(tts.t3, [r])[0] for r in self.requests(tts, n, tokens)]
            r = self.requests(tts, n, tokens)
            batched = [t for k in range(0, n, 8) for t in generate_speech_tokens_batch(tts.t3, r[k : k + 8])]
        out = self._compare(alone, batched)
        agree = [float((x.cpu() == y.cpu()).float().mean()) for x, y in zip(alone, batched) if len(x) == len(y)]
        out.update(tokens=tokens, precision=tts.settings.t3_precision, token_agreement_rate=float(np.mean(agree)))
        return out

    def t3_speed(self) -> dict:
        tts, tokens = self.tts("fast"), self.sizes["speed_tokens"]
        out = {"precision": tts.settings.t3_precision, "tokens": tokens}
        with torch.inference_mode():
            warm = 2 if self.args.dry_run else 8
            r = self.requests(tts, 1, warm)[0]
            generate_speech_tokens(tts.t3, r.cond, r.text_tokens, max_new_tokens=warm, generator=r.generator)
            r = self.requests(tts, 1, tokens)[0]
            self.sync()
            t0 = time.perf_counter()
            got = generate_speech_tokens(tts.t3, r.cond, r.text_tokens, max_new_tokens=tokens, generator=r.generator)
            self.sync()
            dt = time.perf_counter() - t0
            out["exact_path_1_tok_s"] = len(got) / dt
            for rows in (1, *self.sizes["rows"]):
                if not self.args.dry_run and self.left() < 15:
                    out[f"batch_{rows}_skipped"] = "budget"
                    break
                generate_speech_tokens_batch(tts.t3, self.requests(tts, rows, warm))  # warm-up at this size
                reqs = self.requests(tts, rows, tokens)
                watch: dict = {}
                self.sync()
                with device_watch(self.device, watch):
                    t0 = time.perf_counter()
                    got = generate_speech_tokens_batch(tts.t3, reqs)
                    self.sync()
                    dt = time.perf_counter() - t0
                out[f"batch_{rows}_tok_s"] = sum(len(t) for t in got) / dt
                out[f"batch_{rows}_ms_per_step"] = 1000 * dt / tokens
                if "gpu_util_mean_pct" in watch:
                    out[f"batch_{rows}_gpu_util_pct"] = watch["gpu_util_mean_pct"]
                if "cuda_peak_mb" in watch:
                    out[f"batch_{rows}_cuda_peak_mb"] = watch["cuda_peak_mb"]
        return out

    def _static_decode(self, t3, requests: list[DecodeRequest], step: str) -> list[list[int]]:
        batch, got = StaticDecodeBatch(t3, 4, step), {}
        batch.admit(list(range(len(requests))), requests)
        while not batch.empty:
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
        return [got[j] for j in range(len(requests))]

    def t3_static(self) -> dict:
        tts, tokens = self.tts("fast"), self.sizes["speed_tokens"]
        steps = ["static", "cuda_graph"] if self.cuda else ["static"]
        out = {"precision": tts.settings.t3_precision, "tokens": tokens, "steps": steps}
        with torch.inference_mode():
            for n in (1, 8):
                got = {}
                for step in steps:
                    self._static_decode(tts.t3, self.requests(tts, n, 4), step)  # warm-up (kernels, not graphs)
                    watch: dict = {}
                    self.sync()
                    with device_watch(self.device, watch):
                        t0 = time.perf_counter()  # a graph per bucket is captured inside: counted
                        got[step] = self._static_decode(tts.t3, self.requests(tts, n, tokens), step)
                        self.sync()
                        dt = time.perf_counter() - t0
                    out[f"{step}_{n}_tok_s"] = sum(len(t) for t in got[step]) / dt
                    if "cuda_peak_mb" in watch:
                        out[f"{step}_{n}_cuda_peak_mb"] = watch["cuda_peak_mb"]
                if self.cuda:
                    out[f"captured_eager_identical_{n}"] = sum(a == b for a, b in zip(*got.values())) / n
        return out

    def s3gen_speed(self) -> dict:
        tts, n = self.tts("fast"), self.sizes["s3gen_tokens"]
        solve = call_settings(tts.settings).solve
        kw = dict(n_timesteps=solve.n_timesteps, solver=solve.solver, schedule=solve.schedule,
                  sway_coef=solve.sway_coef, prompt_seconds=solve.prompt_seconds)
        if self.args.dry_run:
            kw.update(DRY_RENDER)
        g = torch.Generator().manual_seed(3)
        tokens = [torch.randint(0, tts.s3gen.vocab_size, (n,), generator=g).tolist() for _ in range(self.sizes["s3gen_chunks"])]
        gens = lambda k: [torch.Generator(device=self.device).manual_seed(j) for j in range(k)]
        out = {"tokens_per_chunk": n}
        if not self.args.dry_run:
            tts.s3gen.render(tokens[:1], tts.conds.gen, gens(1), **kw)  # warm-up
        for k, batch in ((1, 1), (len(tokens), tts.settings.render_batch)):
            watch: dict = {}
            self.sync()
            with device_watch(self.device, watch):
                t0 = time.perf_counter()
                wavs = tts.s3gen.render(tokens[:k], tts.conds.gen, gens(k), batch=batch, **kw)
                self.sync()
                dt = time.perf_counter() - t0
            audio = sum(len(w) for w in wavs) / tts.sr
            out[f"chunks_{k}_render_batch"] = batch
            out[f"chunks_{k}_audio_s"] = audio
            out[f"chunks_{k}_s_per_audio_s"] = dt / audio
            if "gpu_util_mean_pct" in watch:
                out[f"chunks_{k}_gpu_util_pct"] = watch["gpu_util_mean_pct"]
        return out

    def text(self, preset: str) -> dict:
        tts = self.tts(preset)
        text = chapter_text(self.sizes["chars"])
        kw = dict(seed=1, max_retries=0, progress=False, **self.synth)
        if not self.args.dry_run:
            tts.synthesize(text[:80], **kw)  # warm-up
        watch: dict = {}
        self.sync()
        with device_watch(self.device, watch):
            t0 = time.perf_counter()
            result = tts.synthesize(text, **kw)
            self.sync()
            wall = time.perf_counter() - t0
        audio = len(result.audio) / tts.sr
        return {"chars": len(text), "chunks": len(result.chunks), "tokens": sum(c.t3_steps for c in result.chunks),
                "t3_s": result.timings["t3_s"], "s3gen_s": result.timings["s3gen_s"],
                "total_s": result.timings["total_s"], "wall_s": wall, "audio_s": audio, "rtf": wall / audio,
                **watch}

    def jobs(self, n: int) -> dict:
        tts = self.tts("fast")
        texts = job_texts(n, self.sizes["job_chars"])
        kw = dict(max_retries=0, progress=False, **self.synth)
        if not self.args.dry_run:
            tts.synthesize(texts[0][:80], seed=0, **kw)  # warm-up
        latencies, audio, tokens, errors = [0.0] * n, [0] * n, [0] * n, []
        begin = threading.Barrier(n + 1)
        start = [0.0]

        def user(k: int) -> None:
            begin.wait()
            try:
                result = tts.synthesize(texts[k], seed=k, **kw)
                audio[k], tokens[k] = len(result.audio), sum(c.t3_steps for c in result.chunks)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies[k] = time.perf_counter() - start[0]

        threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        watch: dict = {}
        with device_watch(self.device, watch):
            start[0] = time.perf_counter()
            begin.wait()
            for t in threads:
                t.join()
            self.sync()
        if errors:
            raise RuntimeError(f"{len(errors)} of {n} jobs failed, first: {errors[0]}")
        wall = max(latencies)
        audio_s = sum(audio) / tts.sr
        return {"jobs": n, "chars": sum(map(len, texts)), "tokens": sum(tokens), "audio_s": audio_s, "wall_s": wall,
                "latency_p50_s": float(np.percentile(latencies, 50)),
                "latency_p95_s": float(np.percentile(latencies, 95)),
                "throughput_audio_s_per_s": audio_s / wall, "t3_tok_s": sum(tokens) / wall, **watch}

    def flash(self) -> dict:
        text, tokens = chapter_text(self.sizes["flash_chars"]), self.sizes["flash_tokens"]
        kw = dict(seed=1, max_retries=0, max_new_tokens=tokens, token_budget_factor=None)
        flash_ckpt = Path(tempfile.mkdtemp(prefix="gpu-check-flash-"))
        try:
            write_random_checkpoint(flash_ckpt, seed=0, small=self.args.dry_run, model="flash")
            # the dry run's CFM takes one step; Flash's meanflow decoder always its own 2
            ar_kw = {**kw, "n_timesteps": DRY_SYNTH["n_timesteps"]} if self.args.dry_run else kw
            out = {"chars": len(text), "tokens_per_chunk": tokens, **self._timed("ar_fast", self.tts("fast"), text, ar_kw)}
            flash = self.tts("flash", lambda: ChatterboxFlashTTS.from_local(flash_ckpt, device=self.device,
                                                                            preset="fast", watermark=False))
            for steps in (5, 3):
                out.update(self._timed(f"flash_k{steps}", flash, text, {**kw, "num_steps": steps}))
                out[f"flash_k{steps}_t3_x_ar"] = out[f"flash_k{steps}_t3_tok_s"] / out["ar_fast_t3_tok_s"]
            return out
        finally:
            shutil.rmtree(flash_ckpt, ignore_errors=True)

    def _timed(self, name: str, tts, text: str, kw: dict) -> dict:
        """One synthesize of `text` (after a warm-up on the full run) and one stream's first piece."""
        if not self.args.dry_run:
            tts.synthesize(text[:80], **kw)
        self.sync()
        t0 = time.perf_counter()
        result = tts.synthesize(text, progress=False, **kw)
        self.sync()
        wall = time.perf_counter() - t0
        stream = tts.generate_stream(text, **kw)
        first = next(stream).ready_s
        stream.close()
        tokens = sum(c.t3_steps for c in result.chunks)
        return {f"{name}_t3_tok_s": tokens / result.timings["t3_s"],
                f"{name}_rtf": wall / (len(result.audio) / tts.sr), f"{name}_first_audio_s": first}

    def close(self) -> None:
        for key in list(self._tts):
            self._tts.pop(key).close()
        if self.wrote_ckpt and self.ckpt is not None:
            shutil.rmtree(self.ckpt, ignore_errors=True)

    def run_interruptible(self) -> dict:
        """`run`; on SIGINT (the shell's timeout) the sections so far are saved, with a note."""
        try:
            return self.run()
        except KeyboardInterrupt:
            self.result["errors"]["interrupted"] = f"interrupted after {time.perf_counter() - self.start:.0f} s"
            self.save()
            self.close()
            return self.result

    def run(self) -> dict:
        self.section("machine", self.machine)
        if self.cuda and "machine" in self.result["errors"]:
            self.save()
            return self.result  # no GPU: nothing else can run
        self.section("checkpoint", self.checkpoint)
        self.section("parity_fp32", self.parity_fp32)
        self.section("parity_bf16", self.parity_bf16)
        self.section("t3_speed", self.t3_speed)
        self.section("t3_static", self.t3_static)
        self.section("s3gen_speed", self.s3gen_speed)
        self.section("text_fast", lambda: self.text("fast"))
        first, *rest = self.sizes["jobs"]
        self.section(f"jobs_{first}", lambda: self.jobs(first))
        self.section("text_fastest", lambda: self.text("fastest"))
        self.section("flash", self.flash)
        for n in rest:  # the fast model again: the least needed section last
            self.section(f"jobs_{n}", lambda n=n: self.jobs(n))
        self.close()
        if self.cuda:
            self.result["cuda_max_memory_allocated_mb"] = max(
                (s.get("cuda_peak_mb", 0.0) for s in self.result["sections"].values()), default=0.0)
        self.save()
        return self.result


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, list):
        return ", ".join(map(str, v[:12])) + (" ..." if len(v) > 12 else "") if v else "-"
    return str(v)


def markdown(result: dict) -> str:
    m = result["sections"].get("machine", {})
    title = f"{m.get('gpu', m.get('device', '?'))}, torch {m.get('torch', '?')}, python {m.get('python', '?')}"
    lines = [f"### GPU check ({'DRY RUN on CPU, small random checkpoint' if result['dry_run'] else 'random full-size checkpoint'}): {title}",
             "", "| section | metric | value |", "| --- | --- | --- |"]
    for name, values in result["sections"].items():
        if name == "machine":
            continue
        for key, v in values.items():
            if key == "path":
                continue
            lines.append(f"| {name} | {key} | {_fmt(v)} |")
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped | {why} |")
    for name, why in result["errors"].items():
        lines.append(f"| {name} | FAILED | {why.replace('|', '/')} |")
    lines.append("")
    lines.append(f"Elapsed {result.get('elapsed_s', 0):.0f} s of a {result['budget_s']:.0f} s budget.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, small random checkpoint, tiny sizes")
    parser.add_argument("--out", default="gpu-check-out", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all sections (default 420; dry run 120)")
    parser.add_argument("--checkpoint", help="an existing checkpoint folder instead of writing a random one")
    args = parser.parse_args()
    if args.budget_s is None:
        args.budget_s = 120.0 if args.dry_run else 420.0
    if not args.dry_run:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 parity means float32 matmuls
    result = Check(args).run_interruptible()
    print(json.dumps(result, default=str))
    print(markdown(result))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
