"""S3Gen's CFM decoder: ODE error against the number of estimator calls (NFE), per solver and time grid.

Every configuration solves the same ODE from the same noise for the same samples (sample i: its own random
speech tokens, voice i mod --voices: a synthetic clip's prompt mel, prompt tokens and x-vector through
S3Gen's own front end). NFE counts velocity evaluations (each a CFG'd batch-2B estimator call): Euler and
AB2 take one per step, Heun and midpoint two, so a 2-stage solver at NFE N runs N/2 steps; only budgets a
method can spend exactly are run. Distances are taken on the generated frames, per sample, then averaged:
  mel L1 (mean |d|, log-mel units) and relative L2 (|d|_2 / |ref|_2)
    against the converged solution (--reference; its own error is estimated from the same solver at half
    the steps) and against upstream's solve (Euler, cosine grid, 10 steps);
  waveform relative L2 after HiFT (the vocoder's random draws seeded identically for every run).
The adaptive solvers (--adaptive, at each of --rtols) pick their own steps from an embedded pair's error
estimate; each run's NFE is what it spent, and its error is set beside the NFE that AB2/sway and Euler/cosine
need for the same error (log-log interpolation between their grid points).

Two velocity fields are solved:
  network: S3Gen's estimator with the given weights. With random weights (the default) this measures ODE
    truncation error on a random field, not audible quality -- and a random estimator's field is nearly
    constant (the "Field:" line of the output), so every solver looks converged. Re-run with
    `--checkpoint DIR` (the official files) before choosing a preset from it.
  mixture: a stand-in with curved trajectories: the exact velocity of the model's flow-matching path
    (x_t = (1 - (1 - 1e-6) t) x0 + t x1) when every mel frame's data distribution is a Gaussian mixture,
    conditional modes around a real mel frame of the voice, unconditional modes over all voices' frames,
    guided like the model (1.7 v_cond - 0.7 v_uncond). It costs nothing, so it always runs FULL_NFE.

    python benchmarks/cfm_steps.py [--checkpoint DIR] [--full] [--fields mixture] [--threads 2]
                                   [--out benchmarks/cfm_steps]

Writes OUT.md (tables), OUT.json (everything, per sample), OUT.png (error against NFE, log scales; needs
matplotlib, the `bench` extra). The default keeps the network study to short sequences and NFE <= 16 so
that it ends in about 10 minutes on 2 CPU cores; --full adds NFE 25 and 50, a 200-step reference, 50 + 50
tokens. --fields mixture skips the network study and the estimator timing (the network still loads: its
front end makes the voices' mels, HiFT the waveforms).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from faster_chatterbox.audio.io import load_audio
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.bench import _machine
from faster_chatterbox.checkpoint import load_weights, read_safetensors, skip_weight_init
from faster_chatterbox.config import ChatterboxConfig
from faster_chatterbox.models.flow_solvers import (ADAPTIVE_SOLVERS, EPSS_GRIDS, Velocity, get_solver, make_t_span,
                                                   make_velocity, solve, solve_adaptive)
from faster_chatterbox.models.s3gen import S3GEN_SR, S3Gen, S3GenConfig
from faster_chatterbox.random_checkpoint import RANDOM_MARKER, _randomize_

UPSTREAM = ("euler", "cosine", 10)
CFG_RATE = 0.7  # the checkpoint's inference_cfg_rate
SIGMA_MIN = 1e-6  # CosyVoice's flow-matching path
DEFAULT_NFE = (2, 3, 4, 5, 6, 8, 10, 16)
FULL_NFE = (2, 3, 4, 5, 6, 8, 10, 16, 25, 50)
DEFAULT_METHODS = ("euler/cosine", "euler/epss", "heun/cosine", "midpoint/cosine", "ab2/cosine", "ab2/sway:-0.6")
ROBUSTNESS_NFE = (4, 5, 6, 8, 10)
RTOLS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)  # the adaptive solvers' tolerances
ADAPTIVE_MAX_NFE = 200  # their budget: high enough that the tolerance, not the cap, sets the steps
EQUAL_ERROR_METHODS = ("ab2/sway:-0.6", "euler/cosine")  # the fixed grids an adaptive run is set beside
MIXTURE_SHAPE = (3, 80, 80)  # noise of the stand-in: (samples, 80, frames); a few frames switching mode dominate
ROBUSTNESS_SHAPE = (8, 80, 200)  # its error, so it gets more frames than the network study
METRICS = {  # key -> table title
    "mel_rel_l2_ref": "mel relative L2 distance from the converged solution",
    "mel_l1_ref": "mel L1 distance (mean |d|, log-mel units) from the converged solution",
    "mel_rel_l2_up": "mel relative L2 distance from upstream's 10-step Euler/cosine output",
    "wav_rel_l2_ref": "waveform relative L2 distance (after HiFT, same seed) from the converged solution's",
}


@dataclass(frozen=True)
class Method:
    """One way to solve: solver + time grid (+ sway coefficient, CFG rate; None = the checkpoint's 0.7)."""

    solver: str
    schedule: str
    sway_coef: float = -1.0
    cfg_rate: float | None = None

    @classmethod
    def parse(cls, text: str) -> Method:
        """'solver/schedule[:sway_coef][@cfg_rate]', e.g. heun/cosine, euler/sway:-0.5, euler/cosine@0."""
        spec, _, cfg = text.partition("@")
        solver, _, grid = spec.partition("/")
        schedule, _, coef = grid.partition(":")
        if not solver or not schedule:
            raise ValueError(f"a method is 'solver/schedule[:sway_coef][@cfg_rate]', got {text!r}")
        method = cls(solver, schedule, float(coef) if coef else -1.0, float(cfg) if cfg else None)
        make_t_span(1 if schedule != "epss" else min(EPSS_GRIDS), schedule, sway_coef=method.sway_coef)  # validates
        get_solver(solver)
        return method

    @property
    def label(self) -> str:
        label = f"{self.solver}/{self.schedule}"
        if self.schedule == "sway" or (self.schedule == "epss" and self.sway_coef != -1.0):
            label += f":{self.sway_coef:g}"
        return label + (f"@{self.cfg_rate:g}" if self.cfg_rate is not None else "")

    def steps_for(self, nfe: int) -> int | None:
        """Steps that spend exactly `nfe` velocity calls, or None when there is no such grid."""
        per_step = get_solver(self.solver).nfe_per_step
        steps = nfe // per_step
        if steps * per_step != nfe or (self.schedule == "epss" and steps not in EPSS_GRIDS):
            return None
        return steps


@dataclass(frozen=True)
class Adaptive:
    """An error-controlled solve: an ADAPTIVE_SOLVERS pair at relative tolerance rtol (CFG rate 0.7)."""

    solver: str
    rtol: float

    @property
    def label(self) -> str:
        return f"{self.solver} rtol {self.rtol:g}"


@dataclass
class Field:
    """An ODE to solve for S samples: velocity(cfg_rate) and the starting noise; `start` = first generated frame;
    mask (S, 1, F): the valid frames (None: all), which alone steer an adaptive solver's steps."""

    name: str
    velocity: Callable[[float], Velocity]
    noise: torch.Tensor  # (S, 80, F)
    start: int
    mask: torch.Tensor | None = None


# ---- S3Gen and the samples ---------------------------------------------------------------------------

def load_s3gen(checkpoint: str | None, seed: int) -> tuple[S3Gen, bool]:
    """S3Gen at the official size: from DIR/s3gen.safetensors, or randomized in place. -> (module, random?)"""
    if checkpoint is None:
        with skip_weight_init():
            s3gen = S3Gen(S3GenConfig())
        _randomize_(s3gen, torch.Generator().manual_seed(seed))
        random_weights = True
    else:
        ckpt = Path(checkpoint)
        config_path = ckpt / "config.json"  # only `init-random --small` checkpoints have one
        config = ChatterboxConfig.load(config_path).s3gen if config_path.is_file() else S3GenConfig()
        with skip_weight_init():
            s3gen = S3Gen(config)
        load_weights(s3gen, read_safetensors(ckpt / "s3gen.safetensors"), ckpt / "s3gen.safetensors",
                     ignore_unexpected=True)
        random_weights = (ckpt / RANDOM_MARKER).is_file()
    s3gen.mel2wav.fold_weight_norm()
    return s3gen.eval(), random_weights


def voice_refs(s3gen: S3Gen, args) -> list[dict]:
    """S3Gen's voice dicts (prompt tokens, prompt mel, x-vector), each with at least prompt + target tokens."""
    clips = ([torch.from_numpy(load_audio(path, S3GEN_SR)) for path in args.voice] if args.voice else
             [torch.from_numpy(synthetic_voice((args.prompt_tokens + args.tokens) / 25 + 1.0, S3GEN_SR, seed=1000 + v))
              for v in range(args.voices)])
    refs = [s3gen.embed_ref(clip, S3GEN_SR) for clip in clips]
    for v, ref in enumerate(refs):
        if ref["prompt_token"].size(1) < args.prompt_tokens + args.tokens:
            raise ValueError(f"voice {v} is too short: {ref['prompt_token'].size(1)} tokens for --prompt-tokens "
                             f"{args.prompt_tokens} + --tokens {args.tokens}")
    return refs


def network_field(s3gen: S3Gen, refs: list[dict], args) -> Field:
    """S3Gen's estimator conditioned on S samples: random target tokens, voice i mod len(refs)."""
    S, Tp, T = args.samples, args.prompt_tokens, args.tokens
    pick = [refs[i % len(refs)] for i in range(S)]
    g = torch.Generator().manual_seed(args.seed)
    token = torch.randint(0, s3gen.vocab_size, (S, T), generator=g)
    mu, mask, spks, cond = s3gen.flow.decoder_inputs(
        token, torch.full((S,), T), torch.cat([r["prompt_token"][:, :Tp] for r in pick]).long(), torch.full((S,), Tp),
        torch.cat([r["prompt_feat"][:, :2 * Tp] for r in pick]), torch.cat([r["embedding"] for r in pick]))
    estimator = s3gen.flow.decoder.estimator
    return Field("network", lambda rate: make_velocity(estimator, mu, mask, spks, cond, rate),
                 torch.randn(S, 80, 2 * (Tp + T), generator=g), start=2 * Tp, mask=mask)


@dataclass(frozen=True)
class MixtureConfig:
    modes: int = 4  # conditional modes per frame
    spread: float = 1.0  # their std around the frame's real mel (log-mel units, per bin)
    std: float = 0.3  # each mode's std
    uncond_modes: int = 64  # unconditional modes: frames of all voices


# The stand-in's shape is a guess: the main table uses the first, the robustness table all of them.
MIXTURES = (MixtureConfig(), MixtureConfig(spread=0.5, std=0.5), MixtureConfig(spread=0.3),
             MixtureConfig(spread=2.0, std=0.5))


def mixture_velocity(x: torch.Tensor, t: torch.Tensor, modes: torch.Tensor, std: float) -> torch.Tensor:
    """E[x1 - (1 - sigma) x0 | x_t = x] when x1 ~ mean over k of N(modes_k, std^2 I), x0 ~ N(0, I).

    x: (..., 80) points; modes: (..., K, 80) (broadcast over the points) -> (..., 80).
    """
    a = 1 - (1 - SIGMA_MIN) * t
    var = a**2 + (t * std) ** 2  # x_t | k ~ N(t m_k, var I)
    # Given mode k: E[x1] - (1 - sigma) E[x0] = m_k + c (x - t m_k); averaged over the mode posterior w.
    c = (t * std**2 - (1 - SIGMA_MIN) * a) / var
    # log w_k = -|x - t m_k|^2 / (2 var) + const; |x|^2 is the same for every k
    logits = (2 * t * (modes @ x.unsqueeze(-1)).squeeze(-1) - t**2 * modes.square().sum(-1)) / (2 * var)  # (..., K)
    mean_mode = (torch.softmax(logits, dim=-1).unsqueeze(-2) @ modes).squeeze(-2)  # (..., 80)
    return c * x + (1 - c * t) * mean_mode


def mixture_field(refs: list[dict], noise: torch.Tensor, args, cfg: MixtureConfig) -> Field:
    """Analytic stand-in for the estimator from `noise` (S, 80, F); float64 throughout (softmax logits cancel)."""
    S, F = noise.shape[0], noise.shape[-1]
    noise = noise.double()
    g = torch.Generator().manual_seed(args.seed + 1)
    mels = [r["prompt_feat"][0].double() for r in refs]  # (Tm, 80) each
    frames = 2 * args.prompt_tokens + torch.arange(F)  # after the prompt, wrapping around short clips
    target = torch.stack([mels[i % len(mels)][frames % mels[i % len(mels)].size(0)] for i in range(S)])  # (S, F, 80)
    cond_modes = target.unsqueeze(2) + cfg.spread * torch.randn(S, F, cfg.modes, 80, generator=g, dtype=torch.float64)
    bank = torch.cat(mels)
    uncond_modes = bank[torch.randperm(bank.size(0), generator=g)[:cfg.uncond_modes]]  # (M, 80)

    def velocity(rate: float) -> Velocity:
        def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x: (S, 80, F)
            points = x.transpose(1, 2)  # (S, F, 80)
            v_cond = mixture_velocity(points, t, cond_modes, cfg.std)
            if rate == 0:
                return v_cond.transpose(1, 2)
            v_uncond = mixture_velocity(points, t, uncond_modes, cfg.std)
            return ((1 + rate) * v_cond - rate * v_uncond).transpose(1, 2)
        return v

    return Field("mixture", velocity, noise, start=0)


# ---- the study ----------------------------------------------------------------------------------------

@torch.inference_mode()
def solve_field(field: Field, method: Method, steps: int) -> torch.Tensor:
    """-> mel (S, 80, F') of the generated frames F'."""
    t_span = make_t_span(steps, method.schedule, sway_coef=method.sway_coef)
    rate = CFG_RATE if method.cfg_rate is None else method.cfg_rate
    return solve(field.velocity(rate), field.noise, t_span, method.solver)[:, :, field.start:]


@torch.inference_mode()
def solve_field_adaptive(field: Field, adaptive: Adaptive):
    """-> (mel (S, 80, F') of the generated frames F', the solve's AdaptiveSolve record)."""
    result = solve_adaptive(field.velocity(CFG_RATE), field.noise, field.mask, adaptive.solver, rtol=adaptive.rtol,
                            max_nfe=ADAPTIVE_MAX_NFE)
    return result.x[:, :, field.start:], result


@torch.inference_mode()
def vocode(s3gen: S3Gen, mel: torch.Tensor, hift_seed: int):
    """mel (S, 80, F') -> (mel, waveform (S, F' * 480))."""
    torch.manual_seed(hift_seed)  # HiFT's source draws: the same for every run
    wav, _ = s3gen.mel2wav.inference(mel.float())
    return mel, wav


def generate(s3gen: S3Gen, field: Field, method: Method, steps: int, hift_seed: int):
    """-> (mel (S, 80, F'), waveform (S, F' * 480)) of the generated frames F'."""
    return vocode(s3gen, solve_field(field, method, steps), hift_seed)


def distances(x: torch.Tensor, ref: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per sample (first dim): mean |x - ref| and |x - ref|_2 / |ref|_2."""
    d = (x - ref).double().flatten(1)
    return d.abs().mean(1).tolist(), (d.norm(dim=1) / ref.double().flatten(1).norm(dim=1)).tolist()


def record(method: str, nfe: int, steps: int, out, ref, up) -> dict:
    mel_l1_ref, mel_rel_l2_ref = distances(out[0], ref[0])
    mel_l1_up, mel_rel_l2_up = distances(out[0], up[0])
    return dict(method=method, nfe=nfe, steps=steps, mel_l1_ref=mel_l1_ref, mel_rel_l2_ref=mel_rel_l2_ref,
                mel_l1_up=mel_l1_up, mel_rel_l2_up=mel_rel_l2_up, wav_rel_l2_ref=distances(out[1], ref[1])[1],
                wav_rel_l2_up=distances(out[1], up[1])[1])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@torch.inference_mode()
def field_shape(field: Field) -> dict:
    """How far from constant the guided velocity is: relative change over t, and under other noise."""
    v, x = field.velocity(CFG_RATE), field.noise
    other = torch.randn(x.shape, generator=torch.Generator().manual_seed(123), dtype=x.dtype)
    v0, v1, v_half = (v(x, torch.tensor(t)) for t in (0.0, 1.0, 0.5))
    v_other = v(other, torch.tensor(0.5))
    return dict(v_over_x=float(v0.norm() / x.norm()), dv_over_t=float((v1 - v0).norm() / v0.norm()),
                dv_over_x=float((v_other - v_half).norm() / v_half.norm()))


def nfe_at_error(runs: list[dict], method: str, error: float) -> dict | None:
    """The NFE at which `method`'s mean mel error first falls to `error`, interpolated in log-log between its
    grid points: {"nfe", "bound"} with bound "=" (interpolated), "<=" (its smallest NFE already does) or ">"
    (its largest does not); None when the method was not run."""
    pts = sorted((r["nfe"], mean(r["mel_rel_l2_ref"])) for r in runs[1:] if r["method"] == method)
    if not pts:
        return None
    for i, (nfe, err) in enumerate(pts):
        if err <= error:
            if i == 0:
                return dict(nfe=nfe, bound="<=")
            n0, e0 = pts[i - 1]
            w = math.log(e0 / error) / math.log(e0 / err)
            return dict(nfe=math.exp(math.log(n0) + w * math.log(nfe / n0)), bound="=")
    return dict(nfe=pts[-1][0], bound=">")


def study(s3gen: S3Gen, field: Field, methods: list[Method], nfes: list[int], reference: Method, ref_steps: int,
          seed: int, log: Callable[[str], None], adaptive: list[Adaptive] = ()) -> dict:
    ref = generate(s3gen, field, reference, ref_steps, seed)
    half = generate(s3gen, field, reference, ref_steps // 2, seed)
    order = get_solver(reference.solver).order
    self_error = mean(distances(half[0], ref[0])[1]) / (2**order - 1)  # Richardson: |M(h) - M(h/2)| / (2^p - 1)
    log(f"{field.name}: reference {reference.label} x {ref_steps}, error estimate {self_error:.2e}")
    solver, schedule, up_steps = UPSTREAM
    up = generate(s3gen, field, Method(solver, schedule), up_steps, seed)
    runs = [record("upstream", up_steps, up_steps, up, ref, up)]
    for method in methods:
        for nfe in nfes:
            steps = method.steps_for(nfe)
            if steps is not None:
                runs.append(record(method.label, nfe, steps, generate(s3gen, field, method, steps, seed), ref, up))
                log(f"{field.name}: {method.label:>16} NFE {nfe:>3}: {mean(runs[-1]['mel_rel_l2_ref']):.2e}")
    no_cfg = Method(solver, schedule, cfg_rate=0.0)  # a different ODE (no guidance): not a truncation error
    unguided = record(no_cfg.label, up_steps, up_steps, generate(s3gen, field, no_cfg, up_steps, seed), ref, up)
    adaptive_runs = []
    for a in adaptive:
        mel, res = solve_field_adaptive(field, a)
        run = record(a.label, res.nfe, len(res.times) - 1, vocode(s3gen, mel, seed), ref, up)
        error = mean(run["mel_rel_l2_ref"])
        run.update(solver=a.solver, rtol=a.rtol, rejected=res.rejected, times=list(res.times),
                   equal_error={m: nfe_at_error(runs, m, error) for m in EQUAL_ERROR_METHODS})
        adaptive_runs.append(run)
        log(f"{field.name}: {a.label:>16} NFE {res.nfe:>3} ({len(res.times) - 1} steps, {res.rejected} rejected): "
            f"{error:.2e}")
    return dict(reference=dict(method=reference.label, steps=ref_steps, self_error_estimate=self_error),
                shape=field_shape(field), nfe=nfes, runs=runs, unguided=unguided, selection=choose_presets(runs),
                adaptive=adaptive_runs)


def resolves(runs: list[dict]) -> bool | None:
    """Whether the field tells solvers apart: Euler/cosine's error falls with every NFE added (on a nearly
    flat field every run sits at the same small, noisy error). None: fewer than 3 Euler/cosine runs."""
    euler = [e for _, e in sorted((r["nfe"], mean(r["mel_rel_l2_ref"])) for r in runs[1:]
                                  if r["method"] == "euler/cosine")]
    return None if len(euler) < 3 else all(a > b for a, b in zip(euler, euler[1:]))


def choose_presets(runs: list[dict]) -> dict:
    """fast: the cheapest run no worse than upstream's own distance to the converged solution (mean and worst
    sample); fastest: the cheapest within 2x of it (lossy; its error is stated). Meaningless where the field
    does not resolve the solvers (`resolves`)."""
    up = runs[0]
    up_mean, up_max = mean(up["mel_rel_l2_ref"]), max(up["mel_rel_l2_ref"])

    def cheapest(factor: float) -> dict | None:
        ok = [r for r in runs[1:] if mean(r["mel_rel_l2_ref"]) <= factor * up_mean
              and max(r["mel_rel_l2_ref"]) <= factor * up_max]
        best = min(ok, key=lambda r: (r["nfe"], mean(r["mel_rel_l2_ref"])), default=None)
        return best and {"method": best["method"], "nfe": best["nfe"], "steps": best["steps"],
                         "mel_rel_l2_ref": mean(best["mel_rel_l2_ref"]),
                         "vs_upstream_error": mean(best["mel_rel_l2_ref"]) / up_mean,
                         "mel_rel_l2_up": mean(best["mel_rel_l2_up"]), "wav_rel_l2_ref": mean(best["wav_rel_l2_ref"])}

    return {"upstream_mel_rel_l2_ref": up_mean, "resolves": resolves(runs), "fast": cheapest(1.0),
            "fastest": cheapest(2.0)}


def robustness(refs: list[dict], methods: list[Method], args) -> dict:
    """mel error / upstream's (both from a 200-step reference) per method and NFE, for every MIXTURES field."""
    table: dict[str, dict[int, list[float]]] = {m.label: {} for m in methods}
    noise = torch.randn(ROBUSTNESS_SHAPE, generator=torch.Generator().manual_seed(args.seed + 2))
    up_method, up_steps = Method(*UPSTREAM[:2]), UPSTREAM[2]
    for config in MIXTURES:
        field = mixture_field(refs, noise, args, config)
        ref = solve_field(field, Method("midpoint", "cosine"), 200)
        up = mean(distances(solve_field(field, up_method, up_steps), ref)[1])
        for method in methods:
            for nfe in ROBUSTNESS_NFE:
                steps = method.steps_for(nfe)
                if steps is not None:
                    error = mean(distances(solve_field(field, method, steps), ref)[1])
                    table[method.label].setdefault(nfe, []).append(error / up)
    # per NFE, the method with the smallest worst-case ratio: `fast` is the cheapest of these with worst <= 1
    best = {nfe: min((max(row[nfe]), mean(row[nfe]), label) for label, row in table.items() if nfe in row)
            for nfe in ROBUSTNESS_NFE}
    best = {nfe: dict(method=label, worst_ratio=worst, mean_ratio=avg) for nfe, (worst, avg, label) in best.items()}
    fast = min((nfe for nfe, b in best.items() if b["worst_ratio"] <= 1.0), default=None)
    return {"configs": [vars(c) for c in MIXTURES], "points": noise.size(0) * noise.size(2),
            "nfe": list(ROBUSTNESS_NFE), "ratio_to_upstream": table, "best_per_nfe": best,
            "fast": fast and dict(nfe=fast, **best[fast])}


def time_cfg(s3gen: S3Gen, frames: int, rounds: int) -> dict:
    """Median seconds of one estimator call on `frames` frames with the CFG pair (2 rows) and without (1 row)."""
    est = s3gen.flow.decoder.estimator
    g = torch.Generator().manual_seed(0)

    def inputs(rows: int) -> dict:
        return dict(x=torch.randn(rows, 80, frames, generator=g), mask=torch.ones(rows, 1, frames),
                    mu=torch.randn(rows, 80, frames, generator=g), t=torch.full((rows,), 0.5),
                    spks=torch.randn(rows, 80, generator=g), cond=torch.randn(rows, 80, frames, generator=g))

    calls = {"cfg_2_rows_s": inputs(2), "no_cfg_1_row_s": inputs(1)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        est(**calls["no_cfg_1_row_s"])  # warm-up
        for _ in range(rounds):  # interleaved
            for key, kwargs in calls.items():
                start = time.perf_counter()
                est(**kwargs)
                times[key].append(time.perf_counter() - start)
    result = {k: statistics.median(v) for k, v in times.items()}
    result.update(frames=frames, rounds=rounds, saving=1 - result["no_cfg_1_row_s"] / result["cfg_2_rows_s"])
    return result


# ---- output -------------------------------------------------------------------------------------------

def field_markdown(name: str, res: dict) -> list[str]:
    runs, nfes = res["runs"], res["nfe"]
    methods = list(dict.fromkeys(r["method"] for r in runs[1:]))
    shape, ref = res["shape"], res["reference"]
    lines = [f"### {name} field", "",
             f"Reference: {ref['method']} x {ref['steps']} steps (own error, estimated from half the steps: "
             f"{ref['self_error_estimate']:.1e}). Field: |v| / |x0| = {shape['v_over_x']:.3f}; v changes by "
             f"{shape['dv_over_t']:.3f} (relative) from t=0 to t=1 and by {shape['dv_over_x']:.3f} under other noise. "
             "Columns: NFE (velocity evaluations). Cells: mean over samples.", ""]
    for key, title in METRICS.items():
        lines += [f"{title}:", "", "| method | " + " | ".join(str(n) for n in nfes) + " |",
                  "|---|" + "---:|" * len(nfes)]
        lines.append("| upstream (euler/cosine, 10) | " + " | ".join(
            f"{mean(runs[0][key]):.1e}" if n == runs[0]["nfe"] else "" for n in nfes) + " |")
        for m in methods:
            cells = {r["nfe"]: mean(r[key]) for r in runs if r["method"] == m}
            lines.append(f"| {m} | " + " | ".join(f"{cells[n]:.1e}" if n in cells else "" for n in nfes) + " |")
        lines.append("")
    lines += adaptive_markdown(res["adaptive"])
    u, sel = res["unguided"], res["selection"]
    lines += [f"Without CFG ({u['method']}, {u['steps']} steps; a different ODE, so this is the guidance's effect, "
              f"not truncation error): mel {mean(u['mel_rel_l2_ref']):.1e} from the guided converged solution.", "",
              f"Upstream's own distance to the converged solution: {sel['upstream_mel_rel_l2_ref']:.1e}."]
    if sel["resolves"] is False:
        lines.append("NOT RESOLVED: Euler's error does not fall with every added NFE, so this field cannot rank "
                     "the solvers and the picks below mean nothing.")
    for preset in ("fast", "fastest"):
        s = sel[preset]
        lines.append(f"- {preset} (cheapest within {'1x' if preset == 'fast' else '2x'} of that): " + (
            "none" if s is None else
            f"{s['method']}, {s['steps']} steps = NFE {s['nfe']}: {s['mel_rel_l2_ref']:.1e} from converged "
            f"({s['vs_upstream_error']:.2f}x upstream's), {s['mel_rel_l2_up']:.1e} from upstream's output, "
            f"waveform {s['wav_rel_l2_ref']:.1e}"))
    return lines + [""]


def adaptive_markdown(runs: list[dict]) -> list[str]:
    """The adaptive runs: NFE spent, errors, and the NFE the EQUAL_ERROR_METHODS need for the same mel error."""
    if not runs:
        return []

    def at(e: dict | None) -> str:
        return "" if e is None else f"{'' if e['bound'] == '=' else e['bound'] + ' '}{e['nfe']:.1f}"

    lines = ["Adaptive solvers (one step sequence for the batch; NFE = evaluations spent, rejected steps included; "
             f"budget {ADAPTIVE_MAX_NFE}). Last columns: the NFE each fixed grid needs for the same mel relative L2 "
             "(log-log interpolation between its grid points; <= / >: beyond its range):", "",
             "| solver | rtol | NFE | steps (rejected) | mel rel L2 | mel L1 | mel rel L2 from upstream | waveform | "
             + " | ".join(f"NFE of {m}" for m in EQUAL_ERROR_METHODS) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(EQUAL_ERROR_METHODS)]
    for r in runs:
        errors = " | ".join(f"{mean(r[key]):.1e}" for key in ("mel_rel_l2_ref", "mel_l1_ref", "mel_rel_l2_up",
                                                               "wav_rel_l2_ref"))
        lines.append(f"| {r['solver']} | {r['rtol']:g} | {r['nfe']} | {r['steps']} ({r['rejected']}) | {errors} | "
                     + " | ".join(at(r["equal_error"][m]) for m in EQUAL_ERROR_METHODS) + " |")
    return lines + [""]


def markdown(result: dict) -> str:
    cfg = result["config"]
    weights = "RANDOM weights" if result["random_weights"] else f"checkpoint {cfg['checkpoint']}"
    t = result["cfg_timing"]
    lines = [f"## CFM solver study ({weights})", "",
             f"{cfg['samples']} samples, {len(cfg['voice'] or []) or cfg['voices']} voices, prompt "
             f"{cfg['prompt_tokens']} + {cfg['tokens']} generated tokens; {result['wall_s']:.0f} s on "
             f"{result['machine']['cpu_count']} CPUs, {result['machine']['torch_threads']} threads.", ""]
    if t is not None:
        lines += [f"One estimator call on {t['frames']} frames (median of {t['rounds']}, interleaved): CFG pair "
                  f"{t['cfg_2_rows_s']:.2f} s, no CFG {t['no_cfg_1_row_s']:.2f} s ({100 * t['saving']:.0f}% less).",
                  ""]
    for name, res in result["fields"].items():
        lines += field_markdown(name, res)
    rob = result["robustness"]
    settings = ", ".join(f"({c['spread']:g}, {c['std']:g})" for c in rob["configs"])
    lines += ["### mixture field: robustness", "",
              f"mel error / upstream's error (<= 1: no worse than upstream) in {len(rob['configs'])} stand-in fields "
              f"(mode spread, mode std) = {settings}, {rob['points']} frames each; min - max (mean).", "",
              "| method | " + " | ".join(f"NFE {n}" for n in rob["nfe"]) + " |", "|---|" + "---:|" * len(rob["nfe"])]
    for method, row in rob["ratio_to_upstream"].items():
        cells = [row.get(n) for n in rob["nfe"]]
        lines.append(f"| {method} | " + " | ".join(
            f"{min(c):.2f} - {max(c):.2f} ({mean(c):.2f})" if c else "" for c in cells) + " |")
    fast = rob["fast"]
    lines += ["", "Best method per NFE (by worst ratio): " + "; ".join(
        f"{nfe}: {b['method']} ({b['worst_ratio']:.2f} worst, {b['mean_ratio']:.2f} mean)"
        for nfe, b in rob["best_per_nfe"].items()) + ".",
        "fast (the cheapest no worse than upstream in every stand-in field): " + (
            "none" if fast is None else f"{fast['method']} at NFE {fast['nfe']}.")]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib  # the `bench` extra; imported only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = result["fields"]
    fig, axes = plt.subplots(len(fields), 2, figsize=(12, 4.5 * len(fields)), squeeze=False)
    for row, (name, res) in zip(axes, fields.items()):
        runs = res["runs"]
        for ax, key, what in ((row[0], "mel_rel_l2_ref", "mel"), (row[1], "wav_rel_l2_ref", "waveform after HiFT")):
            for m in dict.fromkeys(r["method"] for r in runs[1:]):
                pts = sorted((r["nfe"], mean(r[key])) for r in runs if r["method"] == m)
                ax.plot(*zip(*pts), marker="o", ms=3, label=m)
            for solver in dict.fromkeys(r["solver"] for r in res["adaptive"]):
                pts = sorted((r["nfe"], mean(r[key])) for r in res["adaptive"] if r["solver"] == solver)
                ax.plot(*zip(*pts), marker="s", ms=4, ls=":", label=f"{solver} (adaptive, one point per rtol)")
            ax.axhline(mean(runs[0][key]), color="k", ls="--", lw=1, label="upstream (euler/cosine, 10 steps)")
            ax.set(xscale="log", yscale="log", xlabel="NFE (velocity evaluations)",
                   ylabel="relative L2 from converged", title=f"{name} field: {what}")
            ax.set_xticks(res["nfe"], [str(n) for n in res["nfe"]])  # adaptive runs past them widen the axis
            ax.set_xticks([], minor=True)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=7)
    weights = "random weights" if result["random_weights"] else "checkpoint weights"
    fig.suptitle(f"S3Gen CFM decoder: error against NFE ({weights})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {msg}", file=sys.stderr)

    s3gen, random_weights = load_s3gen(args.checkpoint, args.seed)
    if random_weights:
        log("RANDOM weights: the network field measures ODE truncation error on a random field, not quality")
    methods, reference = [Method.parse(m) for m in args.methods], Method.parse(args.reference)
    adaptive = [Adaptive(solver, rtol) for solver in args.adaptive for rtol in args.rtols]
    refs = voice_refs(s3gen, args)
    fields = {}
    if "network" in args.fields:
        network = network_field(s3gen, refs, args)
        fields["network"] = study(s3gen, network, methods, args.nfe, reference, args.reference_steps, args.seed, log,
                                  adaptive)
    mixture = mixture_field(refs, torch.randn(MIXTURE_SHAPE, generator=torch.Generator().manual_seed(args.seed + 3)),
                            args, MIXTURES[0])
    fields["mixture"] = study(s3gen, mixture, methods, list(FULL_NFE), reference, 200, args.seed, log, adaptive)
    return dict(config=vars(args), random_weights=random_weights, fields=fields,
                robustness=robustness(refs, methods, args),
                cfg_timing=time_cfg(s3gen, args.timing_frames, args.timing_rounds) if "network" in fields else None,
                machine=_machine("cpu"), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                wall_s=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint directory (s3gen.safetensors); default: random weights")
    p.add_argument("--voice", action="append", help="reference clip(s) instead of synthetic voices (repeatable)")
    p.add_argument("--voices", type=int, default=2, help="synthetic voices (default 2)")
    p.add_argument("--samples", type=int, default=3, help="samples, each with its own tokens (default 3)")
    p.add_argument("--prompt-tokens", type=int, default=20, help="prompt length in tokens (upstream: up to 250)")
    p.add_argument("--tokens", type=int, default=20, help="generated tokens per sample (25 per second)")
    p.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE), help="NFE budgets (network field)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="solver/schedule[:sway][@cfg]")
    p.add_argument("--adaptive", nargs="*", default=list(ADAPTIVE_SOLVERS), choices=list(ADAPTIVE_SOLVERS),
                   help="adaptive solvers to run at each --rtols (default: all; none: leave them out)")
    p.add_argument("--rtols", type=float, nargs="+", default=list(RTOLS), help="their relative tolerances")
    p.add_argument("--fields", nargs="+", default=["network", "mixture"], choices=["network", "mixture"],
                   help="the velocity fields (the mixture field always runs; without network: no estimator runs)")
    p.add_argument("--reference", default="midpoint/cosine", help="the converged solution's method")
    p.add_argument("--reference-steps", type=int, default=24, help="its steps (network field; mixture: 200)")
    p.add_argument("--full", action="store_true", help="NFE up to 50, a 200-step reference, 50 + 50 tokens")
    p.add_argument("--timing-frames", type=int, default=650, help="frames for the CFG timing (upstream's size)")
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/cfm_steps", help="output path prefix (.md, .json, .png)")
    args = p.parse_args(argv)
    if args.full:
        args.nfe, args.reference_steps, args.prompt_tokens, args.tokens = list(FULL_NFE), 200, 50, 50
    if min(args.nfe) < 1 or min(args.samples, args.voices, args.prompt_tokens, args.tokens) < 1 \
            or args.reference_steps < 2 or min(args.rtols) <= 0:
        p.error("--nfe, --samples, --voices, --prompt-tokens, --tokens, --rtols must be positive, "
                "--reference-steps >= 2")
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
