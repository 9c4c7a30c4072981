"""Parity of S3Gen's token-to-mel flow (upsampling conformer encoder, CFM estimator, Euler/CFG solve) with upstream."""

from __future__ import annotations

import pytest
import torch

from faster_chatterbox.models.flow_solvers import cosine_t_span, euler_cfg_solve
from faster_chatterbox.models.cfm_estimator import CFMEstimatorConfig, ConditionalDecoder
from faster_chatterbox.models.flow import CausalMaskedDiffWithXvec, FlowConfig
from faster_chatterbox.models.flow_encoder import FlowEncoderConfig

from helpers import rel_error

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
# Small variant for multi-step solves: upstream hard-codes 512 encoder channels and 4 upsampled blocks.
SMALL_ENCODER = FlowEncoderConfig(ffn_dim=256, num_blocks=1)
SMALL_ESTIMATOR = CFMEstimatorConfig(hidden_dim=64, num_heads=2, head_dim=16, n_blocks=1, num_mid_blocks=2)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Deterministic non-trivial weights: norm scales around 1, everything else std 0.05."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.normal_(1.0, 0.1, generator=g)
            else:
                p.normal_(0.0, 0.05, generator=g)


def _upstream_estimator(cfg: CFMEstimatorConfig):
    from chatterbox.models.s3gen.decoder import ConditionalDecoder as UpDecoder

    return UpDecoder(in_channels=cfg.in_channels, out_channels=cfg.out_channels, causal=True, channels=[cfg.hidden_dim],
                     dropout=0.0, attention_head_dim=cfg.head_dim, n_blocks=cfg.n_blocks,
                     num_mid_blocks=cfg.num_mid_blocks, num_heads=cfg.num_heads, act_fn="gelu", meanflow=cfg.meanflow)


def _upstream_small_flow(oracle, meanflow: bool = False):
    from chatterbox.models.s3gen.configs import CFM_PARAMS
    from chatterbox.models.s3gen.flow import CausalMaskedDiffWithXvec as UpFlow
    from chatterbox.models.s3gen.flow_matching import CausalConditionalCFM
    from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder

    enc = SMALL_ENCODER
    encoder = UpsampleConformerEncoder(
        output_size=enc.hidden_dim, attention_heads=enc.num_heads, linear_units=enc.ffn_dim, num_blocks=enc.num_blocks,
        normalize_before=True, input_layer="linear", pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn", input_size=enc.input_size, use_cnn_module=False, macaron_style=False)
    estimator = _upstream_estimator(CFMEstimatorConfig(**{**SMALL_ESTIMATOR.__dict__, "meanflow": meanflow}))
    decoder = CausalConditionalCFM(spk_emb_dim=80, cfm_params=CFM_PARAMS, estimator=estimator)
    return UpFlow(encoder=encoder, decoder=decoder).eval()


def _ours_like(up: torch.nn.Module, cfg: FlowConfig) -> CausalMaskedDiffWithXvec:
    with torch.device("meta"):
        ours = CausalMaskedDiffWithXvec(cfg)
    ours.load_state_dict(up.state_dict(), strict=True, assign=True)  # shares upstream's tensors
    return ours.eval()


@pytest.fixture(scope="module")
def full_pair(oracle):
    """(upstream S3Token2Mel().flow, ours) at the official size, sharing the same random weights."""
    from chatterbox.models.s3gen.s3gen import S3Token2Mel

    up = S3Token2Mel().flow.eval()
    _randomize(up, seed=0)
    return up, _ours_like(up, FlowConfig())


def _flow_inputs(seed: int, n_prompt: int, n_tokens: int):
    g = torch.Generator().manual_seed(seed)
    return dict(
        token=torch.randint(0, 6561, (1, n_tokens), generator=g),
        token_len=torch.tensor([n_tokens]),
        prompt_token=torch.randint(0, 6561, (1, n_prompt), generator=g),
        prompt_token_len=torch.tensor([n_prompt]),
        prompt_feat=torch.randn(1, 2 * n_prompt, 80, generator=g),
        embedding=torch.randn(1, 192, generator=g),
    )


def _estimator_inputs(seed: int, batch: int, frames: int):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 80, frames, generator=g),
        mask=torch.ones(batch, 1, frames),
        mu=torch.randn(batch, 80, frames, generator=g),
        t=torch.rand(batch, generator=g),
        spks=torch.randn(batch, 80, generator=g),
        cond=torch.randn(batch, 80, frames, generator=g),
    )


def test_state_dict_keys(full_pair, oracle):
    up, ours = full_pair
    up_sd, ours_sd = up.state_dict(), ours.state_dict()
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in up_sd.items()}
    assert len(up_sd) > 1000
    # The Turbo (meanflow) estimator adds only the time-embedding mixer.
    with torch.device("meta"):
        up_mf = _upstream_estimator(CFMEstimatorConfig(meanflow=True))
        ours_mf = ConditionalDecoder(CFMEstimatorConfig(meanflow=True))
    assert {k: v.shape for k, v in ours_mf.state_dict().items()} == {k: v.shape for k, v in up_mf.state_dict().items()}


def test_encoder_parity(full_pair):
    up, ours = full_pair
    g = torch.Generator().manual_seed(1)
    x, lens = torch.randn(1, 40, 512, generator=g), torch.tensor([40])  # prompt 25 + 15 tokens
    with torch.inference_mode():
        ref, ref_mask = up.encoder(x, lens)
        out, mask = ours.encoder(x, lens)
    assert torch.equal(mask, ref_mask)
    assert rel_error(out, ref) < TOL


def test_estimator_parity(full_pair):
    up, ours = full_pair
    inputs = _estimator_inputs(seed=2, batch=2, frames=48)
    with torch.inference_mode():
        ref = up.decoder.estimator(**inputs)
        out = ours.decoder.estimator(**inputs)
    assert ref.abs().max() > 0.1
    assert rel_error(out, ref) < TOL


@pytest.mark.parametrize("n_timesteps", [3, 10])
def test_inference_parity(full_pair, n_timesteps):
    up, ours = full_pair
    inputs = _flow_inputs(seed=3, n_prompt=25, n_tokens=15)
    with torch.inference_mode():
        torch.manual_seed(7)
        ref, _ = up.inference(**inputs, prompt_feat_len=None, finalize=True, n_timesteps=n_timesteps)
        torch.manual_seed(7)
        out = ours.inference(**inputs, n_timesteps=n_timesteps)
        # caller-supplied noise: the same draw, passed explicitly
        torch.manual_seed(7)
        out_noise = ours.inference(**inputs, n_timesteps=n_timesteps, noise=torch.randn(1, 80, 80))
    assert out.shape == (1, 80, 30)
    assert rel_error(out, ref) < TOL
    assert torch.equal(out_noise, out)


def test_solver_matches_upstream_solve_euler(oracle):
    """The CFG Euler solve alone, against upstream's ConditionalCFM.solve_euler on a shared estimator."""
    from chatterbox.models.s3gen.configs import CFM_PARAMS
    from chatterbox.models.s3gen.flow_matching import CausalConditionalCFM

    up_est = _upstream_estimator(SMALL_ESTIMATOR).eval()
    _randomize(up_est, seed=6)
    up_cfm = CausalConditionalCFM(spk_emb_dim=80, cfm_params=CFM_PARAMS, estimator=up_est)
    inputs = _estimator_inputs(seed=7, batch=1, frames=40)
    inputs["mask"][..., 30:] = 0.0
    t_span = cosine_t_span(4, "cpu", torch.float32)
    ref_t_span = 1 - torch.cos(torch.linspace(0, 1, 5) * 0.5 * torch.pi)
    assert torch.equal(t_span, ref_t_span)
    args = dict(mu=inputs["mu"], mask=inputs["mask"], spks=inputs["spks"], cond=inputs["cond"])
    with torch.inference_mode():
        ref = up_cfm.solve_euler(inputs["x"], t_span=ref_t_span, **args)
        out = euler_cfg_solve(up_est, inputs["x"], t_span=t_span, cfg_rate=0.7, **args)
    assert rel_error(out, ref) < TOL


def test_meanflow_parity(oracle):
    up = _upstream_small_flow(oracle, meanflow=True)
    _randomize(up, seed=8)
    ours = _ours_like(up, FlowConfig(encoder=SMALL_ENCODER, estimator=CFMEstimatorConfig(
        **{**SMALL_ESTIMATOR.__dict__, "meanflow": True})))
    inputs = _estimator_inputs(seed=9, batch=1, frames=40)
    r = inputs["t"] + 0.25
    with torch.inference_mode():
        ref = up.decoder.estimator(**inputs, r=r)
        out = ours.decoder.estimator(**inputs, r=r)
    assert rel_error(out, ref) < TOL

    # Full inference as S3Token2Wav(meanflow=True).flow_inference drives it: the target noise is drawn first,
    # then upstream draws a full-length z and overwrites its target part.
    flow_inputs = _flow_inputs(seed=10, n_prompt=25, n_tokens=15)
    with torch.inference_mode():
        torch.manual_seed(12)
        noised_mels = torch.randn(1, 80, 30)
        ref, _ = up.inference(**flow_inputs, prompt_feat_len=None, finalize=True, n_timesteps=2,
                              noised_mels=noised_mels, meanflow=True)
        torch.manual_seed(12)
        torch.randn(1, 80, 30)  # the target noise, as drawn by the caller
        noise = torch.randn(1, 80, 80)  # prompt (50) + target (30) frames
        noise[:, :, 50:] = noised_mels
        out = ours.inference(**flow_inputs, n_timesteps=2, noise=noise)
    assert rel_error(out, ref) < TOL


def test_mismapped_weight_is_detected(oracle):
    up_est = _upstream_estimator(SMALL_ESTIMATOR).eval()
    _randomize(up_est, seed=13)
    inputs = _estimator_inputs(seed=14, batch=1, frames=24)
    sd = dict(up_est.state_dict())
    q, v = "mid_blocks.1.1.0.attn1.to_q.weight", "mid_blocks.1.1.0.attn1.to_v.weight"
    sd[q], sd[v] = sd[v], sd[q]
    ours = ConditionalDecoder(SMALL_ESTIMATOR).eval()
    with torch.inference_mode():
        ref = up_est(**inputs)
        ours.load_state_dict(up_est.state_dict())
        assert rel_error(ours(**inputs), ref) < TOL
        ours.load_state_dict(sd)
        assert rel_error(ours(**inputs), ref) > 1e-2


def test_batched_padding_matches_single():
    """A right-padded batch item gives the same mel frames as the item alone (all masks honoured)."""
    ours = CausalMaskedDiffWithXvec(FlowConfig(encoder=SMALL_ENCODER, estimator=SMALL_ESTIMATOR)).eval()
    _randomize(ours, seed=15)
    inputs = _flow_inputs(seed=16, n_prompt=10, n_tokens=9)
    g = torch.Generator().manual_seed(17)
    tokens = torch.randint(0, 6561, (2, 9), generator=g)
    lens = torch.tensor([9, 6])
    noise = torch.randn(2, 80, 20 + 18, generator=g)
    shared = {k: inputs[k] for k in ("prompt_token", "prompt_token_len", "prompt_feat", "embedding")}
    with torch.inference_mode():
        batched = ours.inference(tokens, lens, **shared, n_timesteps=3, noise=noise)
        single = ours.inference(tokens[1:, :6], lens[1:], **shared, n_timesteps=3, noise=noise[1:, :, :32])
    assert batched.shape == (2, 80, 18)
    assert rel_error(batched[1:, :, :12], single) < 1e-5


def test_changed_algorithm_step_is_detected(full_pair, monkeypatch):
    """The parity check catches an algorithm change too: a uniform time grid instead of the cosine one."""
    import faster_chatterbox.models.flow as flow_module

    up, ours = full_pair
    inputs = _flow_inputs(seed=3, n_prompt=25, n_tokens=15)
    monkeypatch.setattr(flow_module, "cosine_t_span", flow_module.linear_t_span)
    with torch.inference_mode():
        torch.manual_seed(7)
        ref, _ = up.inference(**inputs, prompt_feat_len=None, finalize=True, n_timesteps=10)
        torch.manual_seed(7)
        out = ours.inference(**inputs, n_timesteps=10)
    assert rel_error(out, ref) > 100 * TOL
