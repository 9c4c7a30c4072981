"""ODE solvers, time grids and guidance for the CFM decoder (models/flow_solvers.py) and their use by the flow."""

from __future__ import annotations

import math

import pytest
import torch

from faster_chatterbox.config import small_config
from faster_chatterbox.models.flow_solvers import (
    ADAPTIVE_SOLVERS, EPSS_GRIDS, SCHEDULES, SOLVERS, CFGVelocity, PlainVelocity, cosine_t_span, euler_cfg_solve,
    linear_t_span, make_t_span, make_velocity, solve, solve_adaptive,
)
from faster_chatterbox.models.cfm_estimator import CFMEstimatorConfig, ConditionalDecoder
from faster_chatterbox.models.flow import CausalMaskedDiffWithXvec
from faster_chatterbox.random_checkpoint import _randomize_

from helpers import rel_error

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- a toy ODE with a known solution: dx/dt = -2 x + 3 t^2 ------------------------------------------------------
# x(t) = (x0 - 3/4) exp(-2t) + 3/2 t^2 - 3/2 t + 3/4, so x(1) = (x0 - 3/4) exp(-2) + 3/4.

def _toy_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -2 * x + 3 * t**2


def _toy_error(solver: str, n_steps: int, schedule: str) -> float:
    x0 = torch.linspace(-1, 2, 24, dtype=torch.float64).reshape(2, 3, 4)
    exact = (x0 - 0.75) * math.exp(-2) + 0.75
    t_span = make_t_span(n_steps, schedule, dtype=torch.float64)
    return float((solve(_toy_velocity, x0, t_span, solver) - exact).abs().max())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_convergence_order(solver, schedule):
    """Halving the steps divides the error by 2^order: Euler 1, Heun, midpoint and AB2 2."""
    errors = [_toy_error(solver, n, schedule) for n in (16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(order - SOLVERS[solver].order) < 0.1 for order in orders), orders


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_nfe_per_step(solver):
    calls = []

    def counting(x, t):
        calls.append(float(t))
        return -x

    solve(counting, torch.ones(1, 2, 3), make_t_span(6, "cosine"), solver)
    assert len(calls) == 6 * SOLVERS[solver].nfe_per_step
    assert 0.0 <= min(calls) and max(calls) <= 1.0


# ---- the adaptive solver ----------------------------------------------------------------------------------
# A curved linear ODE with a known solution: dx/dt = 4t J x, J rotating channel c into c + 40 (c < 40), so each
# pair of channels turns by the angle 2 t^2: x(1) = R(2) x0.

def _rotation(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 4 * t * torch.cat([-x[:, 40:], x[:, :40]], 1)


def _rotated(x0: torch.Tensor, angle: float = 2.0) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.cat([c * x0[:, :40] - s * x0[:, 40:], s * x0[:, :40] + c * x0[:, 40:]], 1)


def _noise(frames: int = 12) -> torch.Tensor:
    return torch.randn(2, 80, frames, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("solver", list(ADAPTIVE_SOLVERS))
def test_adaptive_error_follows_the_tolerance(solver):
    """Tighter rtol: more NFE, less error, and the error stays within a small multiple of the tolerance
    (measured in the controller's own norm, RMS of |err| / (atol + rtol |x|) with atol = rtol)."""
    x0 = _noise()
    exact = _rotated(x0)
    errors, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        result = solve_adaptive(_rotation, x0, solver=solver, rtol=rtol, max_nfe=10_000)
        assert result.times[0] == 0 and result.times[-1] == 1 and list(result.times) == sorted(result.times)
        errors.append(float(((result.x - exact) / (rtol * (1 + exact.abs()))).square().mean().sqrt()) * rtol)
        nfes.append(result.nfe)
        assert errors[-1] <= 5 * rtol, (rtol, errors[-1])
    assert errors == sorted(errors, reverse=True) and nfes == sorted(nfes), (errors, nfes)


@pytest.mark.parametrize("solver", list(ADAPTIVE_SOLVERS))
def test_adaptive_straight_field_costs_less(solver):
    """A constant velocity (straight paths: every stage agrees, the error estimate is 0) is solved exactly in
    fewer evaluations than the curved field at the same tolerance."""
    x0 = _noise()
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
    straight = solve_adaptive(lambda x, t: v, x0, solver=solver, rtol=1e-3)
    curved = solve_adaptive(_rotation, x0, solver=solver, rtol=1e-3)
    assert torch.allclose(straight.x, x0 + v, rtol=0, atol=1e-12)
    assert straight.nfe < curved.nfe and straight.rejected == 0


@pytest.mark.parametrize("solver", list(ADAPTIVE_SOLVERS))
def test_adaptive_nfe_cap(solver):
    """However tight the tolerance, a call spends at most max_nfe evaluations (counted here) and still ends at 1."""
    x0 = _noise()
    for max_nfe in (ADAPTIVE_SOLVERS[solver].min_nfe, 5, 8, 13, 21):
        calls = []

        def counting(x, t):
            calls.append(float(t))
            return _rotation(x, t)

        result = solve_adaptive(counting, x0, solver=solver, rtol=1e-8, max_nfe=max_nfe)
        assert result.nfe == len(calls) <= max_nfe and max_nfe - result.nfe < ADAPTIVE_SOLVERS[solver].min_nfe + 2
        assert result.times[-1] == 1 and max(calls) <= 1 and bool(result.x.isfinite().all())
    broken = solve_adaptive(lambda x, t: x * math.nan, x0, solver=solver, max_nfe=20)  # every step rejected
    assert broken.nfe <= 20 and broken.times == (0.0, 1.0) and bool(broken.x.isnan().all())


@pytest.mark.parametrize("solver", list(ADAPTIVE_SOLVERS))
def test_adaptive_masked_frames_do_not_steer(solver):
    """The batch shares one step sequence chosen from the valid frames only: a wild velocity on masked frames
    changes neither the steps nor any valid frame; and the same call twice takes the same steps."""
    x0 = _noise(16)
    mask = torch.ones(2, 1, 16, dtype=torch.float32)
    mask[1, :, 11:] = 0  # a padded row

    def wild(x, t):  # stiff, oscillating nonsense where the mask is 0
        return torch.where(mask.bool(), _rotation(x, t), 1e3 * torch.sin(300 * t) * x)

    calm = solve_adaptive(_rotation, x0, mask, solver, rtol=1e-2)
    noisy = solve_adaptive(wild, x0, mask, solver, rtol=1e-2)
    assert noisy.times == calm.times and noisy.nfe == calm.nfe < 64 and noisy.rejected == calm.rejected
    assert torch.equal(noisy.x * mask, calm.x * mask)
    again = solve_adaptive(wild, x0, mask, solver, rtol=1e-2)
    assert again.times == noisy.times and torch.equal(again.x, noisy.x)
    assert solve_adaptive(wild, x0, None, solver, rtol=1e-2).nfe > calm.nfe  # unmasked, the nonsense does steer


@pytest.mark.parametrize("kwargs, name", [
    (dict(rtol=0.0), "rtol"), (dict(rtol=-1e-3), "rtol"), (dict(rtol=float("nan")), "rtol"),
    (dict(rtol="1e-3"), "rtol"), (dict(atol=-1.0), "atol"), (dict(max_nfe=0), "max_nfe"), (dict(max_nfe=2), "max_nfe"),
    (dict(max_nfe=8.0), "max_nfe"),
    (dict(first_step=0.0), "first_step"), (dict(first_step=1.5), "first_step"), (dict(solver="rk45"), "rk45"),
    (dict(mask=torch.zeros(2, 1, 12)), "mask"),
])
def test_adaptive_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        solve_adaptive(_rotation, _noise(), **{"solver": "bs32", **kwargs})


# ---- time grids ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_endpoints_and_monotonicity(schedule, dtype):
    for n in sorted(EPSS_GRIDS) if schedule == "epss" else (1, 2, 5, 10, 33):
        for coef in (-1.0, -0.5, 0.0, 1.0):
            t = make_t_span(n, schedule, sway_coef=coef, dtype=dtype)
            assert t.shape == (n + 1,) and t.dtype == dtype
            assert t[0] == 0 and abs(float(t[-1]) - 1) < 1e-6
            assert bool((t[1:] > t[:-1]).all()), (schedule, n, coef, t)


def test_cosine_is_upstream_and_sway_minus_one():
    for n in (1, 4, 10, 50):
        upstream = 1 - torch.cos(torch.linspace(0, 1, n + 1) * 0.5 * torch.pi)
        assert torch.equal(make_t_span(n, "cosine"), upstream)
        assert torch.equal(cosine_t_span(n, "cpu", torch.float32), upstream)
        sway = make_t_span(n, "sway", sway_coef=-1.0, dtype=torch.float64)
        assert torch.allclose(sway, make_t_span(n, "cosine", dtype=torch.float64), rtol=0, atol=1e-15)
        assert torch.equal(make_t_span(n, "sway", sway_coef=0.0), linear_t_span(n, "cpu", torch.float32))


def test_sway_concentrates_steps():
    """s < 0: small steps at the noise end (t=0); s > 0: at the data end."""
    for coef, first_smaller in ((-0.5, True), (0.5, False)):
        steps = make_t_span(10, "sway", sway_coef=coef).diff()
        assert bool(steps[0] < steps[-1]) == first_smaller


def test_epss_grid():
    for n, grid in EPSS_GRIDS.items():
        u = make_t_span(n, "epss", sway_coef=0.0, dtype=torch.float64)
        assert torch.equal(u, torch.tensor(grid, dtype=torch.float64) / 32)
        assert torch.allclose(make_t_span(n, "epss", dtype=torch.float64), 1 - torch.cos(u * math.pi / 2), atol=1e-15)


@pytest.mark.parametrize("call", [
    lambda: make_t_span(10, "karras"),
    lambda: make_t_span(0, "cosine"),
    lambda: make_t_span(2.5, "linear"),
    lambda: make_t_span(8, "epss"),
    lambda: make_t_span(10, "sway", sway_coef=-1.5),
    lambda: make_t_span(10, "sway", sway_coef=2.0),
    lambda: solve(_toy_velocity, torch.ones(1), make_t_span(2), "rk45"),
    lambda: make_velocity(_toy_velocity, *[torch.zeros(1)] * 4, cfg_rate=-0.1),
    lambda: make_velocity(_toy_velocity, *[torch.zeros(1)] * 4, cfg_rate=float("nan")),
])
def test_bad_names_and_values_raise(call):
    with pytest.raises(ValueError):
        call()


# ---- guidance on a small estimator --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def estimator():
    est = ConditionalDecoder(CFMEstimatorConfig(hidden_dim=64, num_heads=2, head_dim=16, n_blocks=1,
                                                num_mid_blocks=2)).eval()
    _randomize_(est, torch.Generator().manual_seed(0))
    return est


def _inputs(batch: int = 2, frames: int = 24) -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, 1, frames)
    mask[-1, :, frames - 5:] = 0  # a padded row
    return dict(x=torch.randn(batch, 80, frames, generator=g), mu=torch.randn(batch, 80, frames, generator=g),
                mask=mask, spks=torch.randn(batch, 80, generator=g), cond=torch.randn(batch, 80, frames, generator=g))


def _upstream_solve_euler(estimator, x, t_span, mu, mask, spks, cond, cfg_rate):
    """Upstream's ConditionalCFM.solve_euler, written out (buffers refilled every step, split, guided)."""
    B, T = mu.size(0), x.size(2)
    x_in, mask_in = torch.zeros(2 * B, 80, T), torch.zeros(2 * B, 1, T)
    mu_in, t_in = torch.zeros(2 * B, 80, T), torch.zeros(2 * B)
    spks_in, cond_in = torch.zeros(2 * B, 80), torch.zeros(2 * B, 80, T)
    for t, r in zip(t_span[:-1], t_span[1:]):
        t, r = t.unsqueeze(0), r.unsqueeze(0)
        x_in[:B] = x_in[B:] = x
        mask_in[:B] = mask_in[B:] = mask
        mu_in[:B] = mu
        t_in[:B] = t_in[B:] = t
        spks_in[:B] = spks
        cond_in[:B] = cond
        dxdt, cfg_dxdt = torch.split(estimator(x_in, mask_in, mu_in, t_in, spks_in, cond_in), [B, B], dim=0)
        x = x + (r - t) * ((1.0 + cfg_rate) * dxdt - cfg_rate * cfg_dxdt)
    return x


@torch.inference_mode()
def test_euler_cfg_solve_is_bit_identical(estimator):
    inputs = _inputs()
    x = inputs.pop("x")
    t_span = cosine_t_span(5, "cpu", torch.float32)
    ref = _upstream_solve_euler(estimator, x, t_span, cfg_rate=0.7, **inputs)
    assert torch.equal(euler_cfg_solve(estimator, x, t_span=t_span, cfg_rate=0.7, **inputs), ref)
    # the generic entry point on upstream's settings is the same computation
    velocity = make_velocity(estimator, cfg_rate=0.7, **inputs)
    assert isinstance(velocity, CFGVelocity)
    assert torch.equal(solve(velocity, x, make_t_span(5, "cosine"), "euler"), ref)


@torch.inference_mode()
def test_no_cfg_is_one_b_row_call(estimator):
    inputs = _inputs()
    x = inputs.pop("x")
    rows = []

    def recording(x_in, *args):
        rows.append(x_in.size(0))
        return estimator(x_in, *args)

    velocity = make_velocity(recording, cfg_rate=0.0, **inputs)
    assert isinstance(velocity, PlainVelocity)
    t = torch.tensor(0.3)
    direct = estimator(x, inputs["mask"], inputs["mu"], torch.full((2,), 0.3), inputs["spks"], inputs["cond"])
    assert torch.equal(velocity(x, t), direct)
    make_velocity(recording, cfg_rate=0.7, **inputs)(x, t)
    assert rows == [2, 4]  # B rows without guidance, 2B with


# ---- the flow module ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flow():
    model = CausalMaskedDiffWithXvec(small_config().s3gen.flow).eval()
    _randomize_(model, torch.Generator().manual_seed(2))
    return model


def _flow_inputs(n_prompt: int = 10, n_tokens: int = 8) -> dict:
    g = torch.Generator().manual_seed(3)
    return dict(token=torch.randint(0, 6561, (2, n_tokens), generator=g), token_len=torch.tensor([n_tokens, 5]),
                prompt_token=torch.randint(0, 6561, (1, n_prompt), generator=g),
                prompt_token_len=torch.tensor([n_prompt]),
                prompt_feat=torch.randn(1, 2 * n_prompt, 80, generator=g), embedding=torch.randn(1, 192, generator=g),
                noise=torch.randn(2, 80, 2 * (n_prompt + n_tokens), generator=g))


def test_flow_defaults_are_upstream(flow):
    inputs = _flow_inputs()
    default = flow.inference(**inputs, n_timesteps=4)
    explicit = flow.inference(**inputs, n_timesteps=4, solver="euler", schedule="cosine", cfg_rate=0.7)
    mu, mask, spks, cond = flow.decoder_inputs(*[inputs[k] for k in ("token", "token_len", "prompt_token",
                                                                      "prompt_token_len", "prompt_feat", "embedding")])
    with torch.inference_mode():
        direct = euler_cfg_solve(flow.decoder.estimator, inputs["noise"], mu, mask, spks, cond,
                                 cosine_t_span(4, "cpu", torch.float32), 0.7)[:, :, 20:]
    assert default.shape == (2, 80, 16)
    assert torch.equal(default, direct)
    assert torch.equal(explicit, default)


@pytest.mark.parametrize("options", [dict(solver="heun"), dict(solver="midpoint", schedule="linear"),
                                     dict(solver="ab2", schedule="sway", sway_coef=-0.6), dict(schedule="epss"),
                                     dict(cfg_rate=0.0), dict(solver="bs32"), dict(solver="heun21", cfg_rate=0.0)])
def test_flow_with_other_solves(flow, options):
    inputs = _flow_inputs()
    default = flow.inference(**inputs, n_timesteps=10)
    out = flow.inference(**inputs, n_timesteps=10, **options)
    assert out.shape == default.shape and bool(out.isfinite().all())
    assert not torch.equal(out, default)
    assert rel_error(out, default) < 0.2  # the same ODE (or, without CFG, a nearby one), solved differently


def test_flow_rejects_bad_options(flow):
    inputs = _flow_inputs()
    with pytest.raises(ValueError, match="solver"):
        flow.inference(**inputs, n_timesteps=2, solver="rk4")
    with pytest.raises(ValueError, match="schedule"):
        flow.inference(**inputs, n_timesteps=2, schedule="karras")
    with pytest.raises(ValueError, match="picks its own steps"):
        flow.inference(**inputs, n_timesteps=2, solver="bs32", schedule="sway")
    cfg = small_config().s3gen.flow
    cfg.estimator.meanflow = True
    meanflow = CausalMaskedDiffWithXvec(cfg).eval()
    with pytest.raises(ValueError, match="meanflow"):
        meanflow.inference(**inputs, n_timesteps=2, solver="heun")
