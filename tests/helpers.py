"""Small shared test utilities."""

from contextlib import contextmanager

import torch


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: the relative error the parity tolerances are written in."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@contextmanager
def one_intra_op_thread():
    """Within `with`, one intra-op thread: several Python threads each running OpenMP's threads on a shared
    2-core CPU wait on each other, ~10x slower (a test of concurrent calls measured 3.7 s against 27 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
