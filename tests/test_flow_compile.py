"""The flow solve at a padded length bucket (CausalConditionalCFM.compile_estimator): the valid frames come
out as the unpadded solve's, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from faster_chatterbox.models.flow import CausalMaskedDiffWithXvec, FlowConfig

from helpers import rel_error
from test_flow import SMALL_ENCODER, SMALL_ESTIMATOR, _randomize

pytestmark = pytest.mark.usefixtures("single_thread")


def _decoder_inputs(frames: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, 1, frames)
    return (torch.randn(1, 80, frames, generator=g), torch.randn(1, 80, frames, generator=g), mask,
            torch.randn(1, 80, generator=g), torch.randn(1, 80, frames, generator=g))


@pytest.mark.parametrize("backend", [None, "aot_eager"])
@pytest.mark.parametrize("solve", [{}, dict(solver="ab2", schedule="sway", sway_coef=-0.6),
                                   dict(solver="bs32")])  # the adaptive steps too: padded frames steer nothing
def test_a_padded_solve_equals_the_unpadded_one(backend, solve):
    flow = CausalMaskedDiffWithXvec(FlowConfig(encoder=SMALL_ENCODER, estimator=SMALL_ESTIMATOR)).eval()
    _randomize(flow, seed=5)
    decoder = flow.decoder
    with torch.inference_mode():
        ref = decoder(*_decoder_inputs(37), n_timesteps=4, **solve)
        decoder.compile_estimator(16, backend=backend)  # 37 frames solved at 48
        padded = decoder(*_decoder_inputs(37), n_timesteps=4, **solve)
    assert padded.shape == ref.shape == (1, 80, 37)
    assert rel_error(padded, ref) < 1e-5


def test_bad_bucket_is_named():
    flow = CausalMaskedDiffWithXvec(FlowConfig(encoder=SMALL_ENCODER, estimator=SMALL_ESTIMATOR))
    with pytest.raises(ValueError, match="bucket"):
        flow.decoder.compile_estimator(0)
