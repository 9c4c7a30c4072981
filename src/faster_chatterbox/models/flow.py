"""S3Gen token-to-mel: speech tokens + reference prompt + x-vector -> 80-bin mel at 50 Hz.

prompt and target tokens are embedded and encoded together (upsampling conformer, 25 -> 50 Hz),
projected to 80 channels (mu), and a conditional flow-matching ODE is solved from Gaussian noise with
the reference mel as in-context condition over the prompt frames. Only the target frames are returned.
Attribute names match the official checkpoint's `flow.*` keys (the ODE network is `decoder.estimator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .flow_solvers import (ADAPTIVE_SOLVERS, cosine_t_span, euler_cfg_solve, euler_solve, linear_t_span,
                           make_t_span, make_velocity, solve, solve_adaptive)
from .cfm_estimator import CFMEstimatorConfig, ConditionalDecoder
from .flow_encoder import FlowEncoderConfig, UpsampleConformerEncoder


@dataclass
class FlowConfig:
    vocab_size: int = 6561
    token_dim: int = 512
    mel_dim: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    inference_cfg_rate: float = 0.7
    encoder: FlowEncoderConfig = field(default_factory=FlowEncoderConfig)
    estimator: CFMEstimatorConfig = field(default_factory=CFMEstimatorConfig)


class CausalConditionalCFM(nn.Module):
    """Holds the estimator; solves the flow ODE (cosine schedule + CFG Euler, or linear + plain Euler for meanflow).

    `solver`, `schedule`, `sway_coef` and `cfg_rate` select another solve (models.flow_solvers); all None
    (the default) is upstream's. The meanflow decoder only has its own distilled solve. An adaptive solver
    (flow_solvers.ADAPTIVE_SOLVERS, e.g. "bs32") picks its own steps at its default tolerance: n_timesteps is
    not used and schedule, sway_coef must be left unset.

    `compile_estimator(bucket)`: the solve runs at lengths padded up to a multiple of `bucket` frames (padded
    frames masked: the estimator's convolutions are causal and its attention masks padded keys, so the valid
    frames come out as unpadded) with the estimator compiled for those static shapes, one graph per bucket.
    """

    def __init__(self, cfg: CFMEstimatorConfig, cfg_rate: float):
        super().__init__()
        self.estimator = ConditionalDecoder(cfg)
        self.cfg_rate = cfg_rate
        self.length_bucket: int | None = None  # pad the solve's frames to a multiple of this (None: as given)
        self._compiled = None  # the estimator's compiled forward (a function: not a submodule, no state)

    def compile_estimator(self, bucket: int, backend: str | None = "inductor", options: dict | None = None) -> None:
        """Solve at lengths padded to multiples of `bucket` frames, with the estimator compiled by `backend`
        for static shapes (None: padded but eager); options: inductor's (for example freezing, max_autotune)."""
        if not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"bucket must be a positive integer, got {bucket!r}")
        self.length_bucket = bucket
        self._compiled = None if backend is None else torch.compile(self.estimator.forward, dynamic=False,
                                                                    backend=backend, options=options)

    def forward(
        self, noise: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
        n_timesteps: int, *, solver: str | None = None, schedule: str | None = None, sway_coef: float | None = None,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        """noise, mu, cond: (B, 80, T); mask: (B, 1, T); spks: (B, 80) -> mel (B, 80, T).

        n_timesteps counts steps (grid intervals): Heun and midpoint call the estimator twice per step.
        """
        frames = mu.shape[-1]
        if self.length_bucket is not None:
            pad = -frames % self.length_bucket
            noise, mu, mask, cond = (F.pad(v, (0, pad)) for v in (noise, mu, mask, cond))  # zeros, masked
        estimator = self._compiled or self.estimator
        return self._solve(estimator, noise, mu, mask, spks, cond, n_timesteps, solver, schedule, sway_coef,
                           cfg_rate)[..., :frames]

    def _solve(self, estimator, noise, mu, mask, spks, cond, n_timesteps, solver, schedule, sway_coef, cfg_rate):
        upstream = solver is None and schedule is None and sway_coef is None and cfg_rate is None
        time_dtype = torch.promote_types(mu.dtype, torch.float32)  # times stay float32 under a bf16 estimator
        if self.estimator.cfg.meanflow:
            if not upstream:
                raise ValueError("the meanflow decoder is distilled for its own solve: "
                                 "solver, schedule, sway_coef and cfg_rate must be left unset")
            # The meanflow (Turbo) decoder is distilled with guidance baked in: no CFG, uniform times.
            t_span = linear_t_span(n_timesteps, mu.device, time_dtype)
            return euler_solve(estimator, noise, mu, mask, spks, cond, t_span)
        if upstream:
            t_span = cosine_t_span(n_timesteps, mu.device, time_dtype)
            return euler_cfg_solve(estimator, noise, mu, mask, spks, cond, t_span, self.cfg_rate)
        velocity = make_velocity(estimator, mu, mask, spks, cond, self.cfg_rate if cfg_rate is None else cfg_rate)
        if solver in ADAPTIVE_SOLVERS:
            if schedule is not None or sway_coef is not None:
                raise ValueError(f"the adaptive solver {solver!r} picks its own steps: schedule and sway_coef "
                                 "must be left unset")
            return solve_adaptive(velocity, noise, mask, solver).x
        t_span = make_t_span(n_timesteps, schedule or "cosine", sway_coef=-1.0 if sway_coef is None else sway_coef,
                             device=mu.device, dtype=time_dtype)
        return solve(velocity, noise, t_span, solver or "euler")


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, cfg: FlowConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FlowConfig()
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.token_dim)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.mel_dim)
        self.encoder = UpsampleConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.hidden_dim, cfg.mel_dim)
        self.decoder = CausalConditionalCFM(cfg.estimator, cfg.inference_cfg_rate)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_proj.weight.dtype

    def encode(self, token: torch.Tensor, token_len: torch.Tensor, embedding: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """token: (B, L) prompt + target tokens, right-padded; token_len: (B,); embedding: (1 or B, 192) x-vector.

        Returns mu (B, 80, 2L), mask (B, 1, 2L) (1 on valid frames) and spks (B, 80), in the flow's dtype.
        """
        B = token.size(0)
        affine = self.spk_embed_affine_layer
        spks = affine(F.normalize(torch.atleast_2d(embedding).to(affine.weight.dtype), dim=1)).expand(B, -1)  # (B, 80)
        valid = torch.arange(token.size(1), device=token.device)[None, :] < token_len[:, None]  # (B, L)
        x = self.input_embedding(token.long()) * valid.unsqueeze(-1).to(spks.dtype)

        h, mel_mask = self.encoder(x, token_len)  # (B, 2L, 512), (B, 1, 2L)
        mu = self.encoder_proj(h).transpose(1, 2).contiguous()  # (B, 80, 2L)
        return mu, mel_mask.to(mu.dtype), spks

    @torch.inference_mode()
    def decoder_inputs(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode prompt + target tokens: the ODE's conditioning. Arguments as in `inference`.

        Returns mu (B, 80, Tm + 2T), mask (B, 1, Tm + 2T) in mu's dtype, spks (B, 80), cond (B, 80, Tm + 2T)
        (the prompt mel over the first Tm frames, zero after).
        """
        B = token.size(0)
        token = torch.cat([prompt_token.expand(B, -1), token], dim=1)  # (B, Tp + T)
        mu, mask, spks = self.encode(token, prompt_token_len.expand(B) + token_len, embedding)
        cond = torch.zeros_like(mu)
        cond[:, :, :prompt_feat.size(1)] = prompt_feat.expand(B, -1, -1).transpose(1, 2)
        return mu, mask, spks, cond

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        n_timesteps: int = 10,
        noise: torch.Tensor | None = None,
        *,
        solver: str | None = None,
        schedule: str | None = None,
        sway_coef: float | None = None,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        """Generate the mel for `token` in the voice of the prompt.

        token: (B, T) long, right-padded; token_len: (B,); prompt_token: (1 or B, Tp); prompt_token_len: (1 or B,);
        prompt_feat: (1 or B, Tm, 80) reference mel (Tm = 2*Tp); embedding: (1 or B, 192) x-vector.
        noise: optional starting noise (B, 80, Tm + 2T); by default drawn as float32 `torch.randn` of that shape,
        consuming the global RNG exactly like the reference implementation.
        solver, schedule, sway_coef, cfg_rate: the ODE solve, see `CausalConditionalCFM` (None: upstream's).
        Returns mel (B, 80, 2T), float32 (or noise's dtype) whatever the flow's dtype; frames past
        2*token_len of a padded row are left-over noise.
        """
        mu, mask, spks, cond = self.decoder_inputs(token, token_len, prompt_token, prompt_token_len, prompt_feat,
                                                   embedding)
        if noise is None:
            noise = torch.randn(mu.shape, device=mu.device, dtype=torch.promote_types(mu.dtype, torch.float32))
        mel = self.decoder(noise, mu, mask, spks, cond, n_timesteps, solver=solver, schedule=schedule,
                           sway_coef=sway_coef, cfg_rate=cfg_rate)
        return mel[:, :, prompt_feat.size(1):]

    @torch.inference_mode()
    def inference_rows(
        self,
        tokens: list[torch.Tensor],
        prompt_tokens: list[torch.Tensor],
        prompt_feats: list[torch.Tensor],
        embeddings: list[torch.Tensor],
        noises: list[torch.Tensor],
        n_timesteps: int = 10,
        *,
        solver: str | None = None,
        schedule: str | None = None,
        sway_coef: float | None = None,
        cfg_rate: float | None = None,
    ) -> list[torch.Tensor]:
        """Several utterances, each with its own prompt and voice, solved as one right-padded batch.

        Row i is [prompt_tokens[i] (1, Tp_i), tokens[i] (1, T_i)] with its prompt mel prompt_feats[i] (1, Tm_i, 80)
        over its first Tm_i frames, x-vector embeddings[i] (1, 192) and starting noise noises[i]
        (1, 80, 2 (Tp_i + T_i)). The encoder's attention and the estimator's attention mask padded keys, and every
        convolution that could read padding is causal (the encoder's lookahead conv sees zeroed padding), so each
        row equals `inference` of that row alone up to float rounding.
        Returns the mels [(1, 80, 2 (Tp_i + T_i) - Tm_i)] in the noises' dtype.
        """
        rows = [torch.cat([p.reshape(-1), t.reshape(-1)]) for p, t in zip(prompt_tokens, tokens)]
        token_len = torch.tensor([row.numel() for row in rows], device=rows[0].device)
        token = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, L)
        mu, mask, spks = self.encode(token, token_len, torch.cat([e.reshape(1, -1) for e in embeddings]))
        cond = torch.zeros_like(mu)  # (B, 80, 2L)
        noise = mu.new_zeros(mu.shape, dtype=noises[0].dtype)  # padded frames stay 0: they are masked out
        frames = [self.cfg.token_mel_ratio * row.numel() for row in rows]
        for i, (feat, row_noise) in enumerate(zip(prompt_feats, noises)):
            if row_noise.shape != (1, self.cfg.mel_dim, frames[i]):
                raise ValueError(f"noise of row {i} has shape {tuple(row_noise.shape)}, "
                                 f"expected {(1, self.cfg.mel_dim, frames[i])}")
            cond[i, :, :feat.size(1)] = feat.reshape(-1, self.cfg.mel_dim).transpose(0, 1)
            noise[i, :, :frames[i]] = row_noise[0]
        mel = self.decoder(noise, mu, mask, spks, cond, n_timesteps, solver=solver, schedule=schedule,
                           sway_coef=sway_coef, cfg_rate=cfg_rate)  # (B, 80, 2L)
        return [mel[i:i + 1, :, feat.size(1):n] for i, (feat, n) in enumerate(zip(prompt_feats, frames))]
