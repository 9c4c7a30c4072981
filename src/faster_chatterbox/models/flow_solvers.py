"""ODE solvers and time schedules for S3Gen's conditional flow matching (noise at t=0 -> mel at t=1).

The estimator is any callable `estimator(x, mask, mu, t, spks, cond, r=None) -> velocity` with the
shapes of `models.cfm_estimator.ConditionalDecoder.forward`. The solvers see it through a velocity
`v(x, t)`: `CFGVelocity` (guided, one batch-2B call) or `PlainVelocity` (unguided, one batch-B call).

Cost is counted in NFE (estimator calls): Euler and AB2 use 1 per step, Heun and midpoint 2.
Upstream (exact preset): Euler, 10 steps on the cosine grid, CFG rate 0.7 (`euler_cfg_solve`).
Besides the fixed-grid solvers (`SOLVERS`, `solve`), `solve_adaptive` picks its own steps from an embedded
pair's local error estimate (`ADAPTIVE_SOLVERS`: Bogacki-Shampine 3(2), Heun-Euler 2(1)) and returns the NFE
it spent.

Precision: the estimator runs in the dtype of its conditioning `mu` (e.g. bfloat16), while the ODE state x,
the times and the guidance combination stay in x's dtype (float32): x is cast at each estimator call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

Estimator = Callable[..., torch.Tensor]
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, 80, T), t 0-d) -> v (B, 80, T)


# ---- time grids: n_steps + 1 increasing times from 0 to 1 -----------------------------------------

def linear_t_span(n_steps: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """n_steps+1 uniformly spaced times 0 ... 1."""
    return torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)


def cosine_t_span(n_steps: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """n_steps+1 times 1 - cos(s * pi/2), s uniform on [0, 1]: small steps near the noise end."""
    return 1 - torch.cos(linear_t_span(n_steps, device, dtype) * 0.5 * math.pi)


# Sway sampling (F5-TTS, arXiv 2410.06885) warps a grid u on [0, 1]: t = u + s (cos(pi/2 u) - 1 + u).
# s = -1 gives 1 - cos(pi/2 u), upstream's cosine grid; s = 0 the identity. The warp is increasing
# for -1 <= s < 1 / (pi/2 - 1).
SWAY_MIN, SWAY_MAX = -1.0, 1.0 / (0.5 * math.pi - 1.0)

# Empirically Pruned Step Sampling (EPSS, arXiv 2505.19931, as in F5-TTS): for a few step counts, a
# hand-pruned subset of the uniform 32-step grid (entries in 1/32), dense near the noise end. The
# pruned grid is then sway-warped like a uniform one.
EPSS_GRIDS: dict[int, tuple[int, ...]] = {
    5: (0, 2, 4, 8, 16, 32),
    6: (0, 2, 4, 6, 8, 16, 32),
    7: (0, 2, 4, 6, 8, 16, 24, 32),
    10: (0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32),
    12: (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32),
}

SCHEDULES = ("cosine", "linear", "sway", "epss")


def sway(u: torch.Tensor, coef: float) -> torch.Tensor:
    """Sway-warp a grid u on [0, 1] (same shape, same endpoints)."""
    return u + coef * (torch.cos(0.5 * math.pi * u) - 1 + u)


def make_t_span(n_steps: int, schedule: str = "cosine", *, sway_coef: float = -1.0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_steps + 1,) times 0 = t_0 < ... < t_n = 1.

    schedule: "cosine" (upstream, = sway with s=-1), "linear", "sway" (coefficient `sway_coef`), or
    "epss" (the pruned grid for n_steps in EPSS_GRIDS, sway-warped with `sway_coef`; -1 as in F5-TTS).
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown time schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if schedule in ("sway", "epss") and not SWAY_MIN <= sway_coef < SWAY_MAX:
        raise ValueError(f"sway_coef must be in [{SWAY_MIN}, {SWAY_MAX:.4f}) for an increasing grid, got {sway_coef!r}")
    if schedule == "cosine":
        return cosine_t_span(n_steps, device, dtype)
    if schedule == "linear":
        return linear_t_span(n_steps, device, dtype)
    if schedule == "sway":
        return sway(linear_t_span(n_steps, device, dtype), sway_coef)
    if n_steps not in EPSS_GRIDS:
        raise ValueError(f"the epss schedule has grids for {sorted(EPSS_GRIDS)} steps only, got {n_steps}")
    u = torch.tensor(EPSS_GRIDS[n_steps], device=device, dtype=dtype) / 32
    return sway(u, sway_coef)


# ---- velocities -------------------------------------------------------------------------------------

class CFGVelocity:
    """Classifier-free-guided velocity as a single batch-2B estimator call.

    Rows [:B] are conditional, rows [B:] unconditional (mu, spks and cond zero; x, mask and t shared);
    v = (1 + rate) * v_cond - rate * v_uncond. The doubled conditioning buffers are built once.
    """

    def __init__(
        self,
        estimator: Estimator,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        cfg_rate: float = 0.7,
    ):
        B = mu.size(0)
        self.estimator, self.batch, self.cfg_rate = estimator, B, cfg_rate
        self.mask_in = mask.repeat(2, 1, 1)  # (2B, 1, T)
        self.mu_in = torch.zeros((2 * B, *mu.shape[1:]), device=mu.device, dtype=mu.dtype)  # (2B, 80, T)
        self.mu_in[:B] = mu
        self.spks_in = torch.zeros((2 * B, *spks.shape[1:]), device=spks.device, dtype=spks.dtype)  # (2B, 80)
        self.spks_in[:B] = spks
        self.cond_in = torch.zeros((2 * B, *cond.shape[1:]), device=cond.device, dtype=cond.dtype)  # (2B, 80, T)
        self.cond_in[:B] = cond
        self.x_in = torch.empty_like(self.mu_in)  # x cast to the estimator's dtype
        self.t_in = torch.empty(2 * B, device=mu.device, dtype=torch.promote_types(mu.dtype, torch.float32))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, 80, T); t: 0-d time -> guided velocity (B, 80, T) in x's dtype."""
        B = self.batch
        self.x_in[:B] = x
        self.x_in[B:] = x
        self.t_in[:] = t
        v = self.estimator(self.x_in, self.mask_in, self.mu_in, self.t_in, self.spks_in, self.cond_in).to(x.dtype)
        v_cond, v_uncond = v[:B], v[B:]
        return (1.0 + self.cfg_rate) * v_cond - self.cfg_rate * v_uncond


class PlainVelocity:
    """Unguided (conditional only) velocity: one batch-B estimator call, half the rows of CFGVelocity."""

    def __init__(self, estimator: Estimator, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor,
                 cond: torch.Tensor):
        self.estimator, self.mu, self.mask, self.spks, self.cond = estimator, mu, mask, spks, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, 80, T); t: 0-d time -> velocity (B, 80, T) in x's dtype."""
        v = self.estimator(x.to(self.mu.dtype), self.mask, self.mu, t.expand(x.size(0)), self.spks, self.cond)
        return v.to(x.dtype)


def make_velocity(estimator: Estimator, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor,
                  cond: torch.Tensor, cfg_rate: float) -> Velocity:
    """CFGVelocity for cfg_rate > 0, PlainVelocity (no unconditional rows at all) for cfg_rate == 0."""
    if not (isinstance(cfg_rate, (int, float)) and math.isfinite(cfg_rate) and cfg_rate >= 0):
        raise ValueError(f"cfg_rate must be a finite number >= 0, got {cfg_rate!r}")
    if cfg_rate == 0:
        return PlainVelocity(estimator, mu, mask, spks, cond)
    return CFGVelocity(estimator, mu, mask, spks, cond, cfg_rate)


# ---- fixed-grid solvers: x at t_span[0] -> x at t_span[-1] ----------------------------------------------

def _euler(velocity: Velocity, x: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    for t, r in zip(t_span[:-1], t_span[1:]):
        x = x + (r - t) * velocity(x, t)
    return x


def _heun(velocity: Velocity, x: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    """Explicit trapezoid: Euler predictor, then the mean of the slopes at both ends."""
    for t, r in zip(t_span[:-1], t_span[1:]):
        h = r - t
        v = velocity(x, t)
        x = x + 0.5 * h * (v + velocity(x + h * v, r))
    return x


def _midpoint(velocity: Velocity, x: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    """Explicit midpoint: the slope at a half Euler step."""
    for t, r in zip(t_span[:-1], t_span[1:]):
        h = r - t
        x_half = x + 0.5 * h * velocity(x, t)
        x = x + h * velocity(x_half, t + 0.5 * h)
    return x


def _adams_bashforth2(velocity: Velocity, x: torch.Tensor, t_span: torch.Tensor) -> torch.Tensor:
    """Two-step Adams-Bashforth on a variable grid (first step Euler): the slope is extrapolated
    linearly from the last two evaluations, so 2nd order at one estimator call per step."""
    v_prev = h_prev = None
    for t, r in zip(t_span[:-1], t_span[1:]):
        h = r - t
        v = velocity(x, t)
        slope = v if v_prev is None else v + (0.5 * h / h_prev) * (v - v_prev)
        x = x + h * slope
        v_prev, h_prev = v, h
    return x


@dataclass(frozen=True)
class Solver:
    run: Callable[[Velocity, torch.Tensor, torch.Tensor], torch.Tensor]
    nfe_per_step: int  # estimator calls per step
    order: int  # global convergence order


SOLVERS: dict[str, Solver] = {
    "euler": Solver(_euler, nfe_per_step=1, order=1),
    "heun": Solver(_heun, nfe_per_step=2, order=2),
    "midpoint": Solver(_midpoint, nfe_per_step=2, order=2),
    "ab2": Solver(_adams_bashforth2, nfe_per_step=1, order=2),
}


def _unknown_solver(name: str) -> ValueError:
    return ValueError(f"unknown ODE solver {name!r}: choose one of {', '.join(SOLVERS)} (fixed grids) or "
                      f"{', '.join(ADAPTIVE_SOLVERS)} (adaptive)")


def get_solver(name: str) -> Solver:
    """A fixed-grid solver by name (ValueError naming every solver, adaptive ones included, when unknown)."""
    if name not in SOLVERS:
        raise _unknown_solver(name)
    return SOLVERS[name]


def solve(velocity: Velocity, x: torch.Tensor, t_span: torch.Tensor, solver: str = "euler") -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from x (B, 80, T) at t_span[0] over the grid t_span (n+1,).

    Returns x at t_span[-1], (B, 80, T); costs n * SOLVERS[solver].nfe_per_step velocity calls.
    """
    return get_solver(solver).run(velocity, x, t_span)


# ---- the adaptive solver: an embedded pair picks the steps from its local error estimate ----------------

@dataclass(frozen=True)
class EmbeddedPair:
    """An explicit Runge-Kutta pair: stage i is evaluated at t + c[i] h on x + h * sum_j a[i][j] k_j; the step
    is x + h * sum_i b[i] k_i (order `order`) and its local error estimate h * sum_i e[i] k_i, the difference
    to the embedded solution of order `order - 1`. fsal: the last stage is evaluated at the new state (a[-1] ==
    b), so an accepted step's last evaluation is the next step's first (first same as last)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    order: int
    fsal: bool

    @property
    def final_nfe(self) -> int:
        """Evaluations of a step without its error estimate, the first stage known (an FSAL pair skips its last)."""
        return len(self.c) - 1 - self.fsal

    @property
    def min_nfe(self) -> int:
        """The smallest budget that reaches t = 1: the first evaluation and one step taken without error control."""
        return 1 + self.final_nfe


ADAPTIVE_SOLVERS: dict[str, EmbeddedPair] = {
    # Bogacki & Shampine (1989): 3rd order, 2nd-order estimate; 3 NFE per step after the first (FSAL).
    "bs32": EmbeddedPair(c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
                         b=(2 / 9, 1 / 3, 4 / 9, 0.0), e=(-5 / 72, 1 / 12, 1 / 9, -1 / 8), order=3, fsal=True),
    # Heun's trapezoid with Euler embedded: 2nd order, 1st-order estimate; 2 NFE per step.
    "heun21": EmbeddedPair(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), e=(-0.5, 0.5), order=2, fsal=False),
}

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0  # step-size controller: h *= clamp(0.9 err^(-1/order), 0.2, 10)


class AdaptiveSolve(NamedTuple):
    """What `solve_adaptive` returns: the solution and what it cost."""

    x: torch.Tensor  # the state at t = 1, (B, 80, T)
    nfe: int  # velocity evaluations spent, the rejected steps' included
    times: tuple[float, ...]  # the accepted step sequence 0 = t_0 < ... < t_n = 1
    rejected: int  # steps retried with a smaller h


def _positive(name: str, value, *, zero_ok: bool = False) -> float:
    """value as a float if it is a finite real > 0 (>= 0 with zero_ok), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, got {value!r}")
    return float(value)


def solve_adaptive(velocity: Velocity, x: torch.Tensor, mask: torch.Tensor | None = None, solver: str = "bs32", *,
                   rtol: float = 0.05, atol: float | None = None, max_nfe: int = 64,
                   first_step: float | None = None) -> AdaptiveSolve:
    """Integrate dx/dt = velocity(x, t) from x (B, 80, T) at t = 0 to t = 1 with error-controlled steps.

    One step sequence for the whole batch: a step is accepted when the error norm, the RMS over the valid
    entries (mask (B, 1, T) nonzero; None: all) of |err| / (atol + rtol * max(|x|, |x_new|)), is <= 1; either
    way the next h is h * clamp(0.9 * norm^(-1/order), 0.2, 10) (no growth right after a rejection), and a
    rejected step is retried from the same state. rtol: the relative tolerance per mel entry (smaller: more
    steps, less error; the default 0.05 spends 14 NFE with bs32 at about upstream's 10-step error on the step
    study's synthetic field, BENCHMARKS.md 24); atol: the absolute one (None: rtol, the noise at t = 0 having
    unit scale).
    first_step: the first trial h (None: Hairer-Norsett-Wanner's starting-step estimate, one evaluation).
    max_nfe: the budget (at least the pair's `min_nfe`): when one more error-controlled step could leave too
    little for a final one, the rest of the interval is taken in one step without error control, so a call
    never exceeds it; the result says what was spent.

    CPU/GPU-eager, not capturable: each step reads its error norm on the host (one sync per step) and the
    number of steps depends on the data. Deterministic: the same inputs on the same device take the same steps.
    """
    if solver not in ADAPTIVE_SOLVERS:
        raise _unknown_solver(solver)
    pair = ADAPTIVE_SOLVERS[solver]
    rtol = _positive("rtol", rtol)
    atol = rtol if atol is None else _positive("atol", atol, zero_ok=True)
    if isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < pair.min_nfe:
        raise ValueError(f"max_nfe must be an integer >= {pair.min_nfe} for {solver}, got {max_nfe!r}")
    if first_step is not None and not 0 < _positive("first_step", first_step) <= 1:
        raise ValueError(f"first_step must be in (0, 1], got {first_step!r}")
    valid = torch.ones_like(x[:, :1]) if mask is None else (mask != 0).to(x.dtype).expand_as(x[:, :1])  # (B, 1, T)
    entries = float(valid.sum()) * x.size(1)
    if entries == 0:
        raise ValueError("mask has no valid frame")
    nfe = 0

    def f(x: torch.Tensor, t: float) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return velocity(x, torch.tensor(t, dtype=x.dtype, device=x.device))

    def norm(d: torch.Tensor, scale: torch.Tensor) -> float:
        return math.sqrt(float((d / scale).square().mul(valid).sum()) / entries)

    def stage(x: torch.Tensor, h: float, weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor:
        return x + h * sum(w * k for w, k in zip(weights, ks) if w)

    t, k1, times, rejected = 0.0, f(x, 0.0), [0.0], 0
    if first_step is not None:
        h = first_step
    elif nfe + 1 + pair.final_nfe <= max_nfe:  # Hairer, Norsett & Wanner, Solving ODEs I, II.4
        scale = atol + rtol * x.abs()
        d0, d1 = norm(x, scale), norm(k1, scale)
        h0 = 0.01 * d0 / d1 if min(d0, d1) > 1e-5 else 1e-6
        d2 = norm(f(x + h0 * k1, h0) - k1, scale) / h0
        h1 = (0.01 / max(d1, d2)) ** (1 / pair.order) if max(d1, d2) > 1e-15 else max(1e-6, 1e-3 * h0)
        h = min(100 * h0, h1)
    else:
        h = 1.0
    attempt_nfe = len(pair.c) - 1  # stages 2..s; the first is known at every attempt
    after_nfe = (not pair.fsal) + pair.final_nfe  # worst case left to finish after an attempt
    grow = MAX_FACTOR
    while t < 1:
        h = min(h, 1 - t)
        controlled = nfe + attempt_nfe + after_nfe <= max_nfe
        if not controlled:
            h = 1 - t
        last = h >= 1 - t
        ks = [k1]
        for i in range(1, len(pair.c) - (pair.fsal and not controlled)):
            ks.append(f(stage(x, h, pair.a[i], ks), 1.0 if last and pair.c[i] == 1 else t + pair.c[i] * h))
        x_new = stage(x, h, pair.b, ks)
        err = norm(stage(torch.zeros_like(x), h, pair.e, ks), atol + rtol * torch.maximum(x.abs(), x_new.abs())) \
            if controlled else 0.0
        if err <= 1:
            t, x = (1.0 if last else t + h), x_new
            times.append(t)
            k1 = ks[-1] if pair.fsal else (f(x, t) if t < 1 else k1)
        else:
            rejected += 1
        factor = grow if err == 0 else min(grow, max(MIN_FACTOR, SAFETY * err ** (-1 / pair.order)))  # NaN: 0.2
        grow = MAX_FACTOR if err <= 1 else 1.0
        h *= factor
    return AdaptiveSolve(x, nfe, tuple(times), rejected)


def euler_cfg_solve(
    estimator: Estimator,
    x: torch.Tensor,
    mu: torch.Tensor,
    mask: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    t_span: torch.Tensor,
    cfg_rate: float = 0.7,
) -> torch.Tensor:
    """Fixed-step Euler with classifier-free guidance (one fused 2B estimator call per step): upstream's solve.

    x: noise (B, 80, T); mu, cond: (B, 80, T); mask: (B, 1, T); spks: (B, 80); t_span: (n+1,) -> (B, 80, T).
    """
    return _euler(CFGVelocity(estimator, mu, mask, spks, cond, cfg_rate), x, t_span)


def euler_solve(
    estimator: Estimator,
    x: torch.Tensor,
    mu: torch.Tensor,
    mask: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    t_span: torch.Tensor,
) -> torch.Tensor:
    """Fixed-step Euler without guidance; passes the step end `r` (used by meanflow estimators).

    Shapes as in `euler_cfg_solve`.
    """
    for t, r in zip(t_span[:-1], t_span[1:]):
        t, r = t[None], r[None]  # (1,): broadcast over the batch
        x = x + (r - t) * estimator(x.to(mu.dtype), mask, mu, t, spks, cond, r=r).to(x.dtype)
    return x
