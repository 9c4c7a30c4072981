"""ODE solvers and time schedules for S3Gen's conditional flow matching (noise at t=0 -> mel at t=1).

The estimator is any callable `estimator(x, mask, mu, t, spks, cond, r=None) -> velocity` with the
shapes of `models.cfm_estimator.ConditionalDecoder.forward`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Estimator = Callable[..., torch.Tensor]


def linear_t_span(n_steps: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """n_steps+1 uniformly spaced times 0 ... 1."""
    return torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)


def cosine_t_span(n_steps: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """n_steps+1 times 1 - cos(s * pi/2), s uniform on [0, 1]: small steps near the noise end."""
    return 1 - torch.cos(linear_t_span(n_steps, device, dtype) * 0.5 * math.pi)


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
        self.x_in = torch.empty_like(self.mu_in)
        self.t_in = torch.empty(2 * B, device=mu.device, dtype=mu.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, 80, T); t: 0-d time -> guided velocity (B, 80, T)."""
        B = self.batch
        self.x_in[:B] = x
        self.x_in[B:] = x
        self.t_in[:] = t
        v = self.estimator(self.x_in, self.mask_in, self.mu_in, self.t_in, self.spks_in, self.cond_in)
        v_cond, v_uncond = v[:B], v[B:]
        return (1.0 + self.cfg_rate) * v_cond - self.cfg_rate * v_uncond


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
    """Fixed-step Euler with classifier-free guidance (one fused 2B estimator call per step).

    x: noise (B, 80, T); mu, cond: (B, 80, T); mask: (B, 1, T); spks: (B, 80); t_span: (n+1,) -> (B, 80, T).
    """
    velocity = CFGVelocity(estimator, mu, mask, spks, cond, cfg_rate)
    for t, r in zip(t_span[:-1], t_span[1:]):
        x = x + (r - t) * velocity(x, t)
    return x


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
        x = x + (r - t) * estimator(x, mask, mu, t, spks, cond, r=r)
    return x
