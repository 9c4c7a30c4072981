"""Keyed sampling (engine.sampling.keyed_sample_rows): draws from the given probabilities, a request's tokens
independent of its batch mates and of when it joined, reruns identical."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from faster_chatterbox.engine.batch_decode import DecodeBatch, generate_speech_tokens_batch
from faster_chatterbox.engine.sampling import hash32, keyed_sample_rows, keyed_uniform
from faster_chatterbox.engine.static_batch import new_decode_batch
from faster_chatterbox.settings import PRESET_NAMES, engine_settings

from test_batch_decode import _model, _requests

pytestmark = pytest.mark.usefixtures("single_thread")


def _lowbias32(x: int) -> int:
    """The hash in plain Python integers (no overflow possible): the reference for the tensor version."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_is_lowbias32_on_32_bit_values():
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF, 123456789]
    got = hash32(torch.tensor(values, dtype=torch.long)).tolist()
    assert got == [_lowbias32(v) for v in values]


@pytest.mark.parametrize("vary", ["counter", "seed"])
def test_keyed_draws_follow_the_probabilities(vary):
    """Chi-square goodness of fit over 40,000 draws of one distribution (8 tokens of a vocabulary of 64, the
    rest probability 0, never drawn), the draws keyed by successive counters or by different seeds."""
    vocab, n = 64, 40_000
    ids = torch.tensor([5, 10, 61, 62, 40, 3, 4, 7])
    p = np.array([0.4, 0.2, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01])
    probs = torch.zeros(vocab)
    probs[ids] = torch.tensor(p, dtype=torch.float32)
    big_seed = torch.full((n,), 2**62 + 12345, dtype=torch.long)
    seeds, counters = ((big_seed, torch.arange(n)) if vary == "counter"
                       else (torch.arange(n) * 7919 + 1, torch.zeros(n, dtype=torch.long)))
    tokens = keyed_sample_rows(probs.expand(n, -1), seeds, counters)[:, 0]
    counts = np.array([(tokens == i).sum().item() for i in ids])
    assert counts.sum() == n  # nothing of probability 0
    assert chisquare(counts, p * n).pvalue > 1e-3


def test_uniforms_lie_strictly_inside_the_unit_interval():
    u = keyed_uniform(torch.arange(64), torch.arange(64), 8194)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 1e-3


@pytest.fixture(scope="module")
def t3():
    return _model()


def _eight(budget: int = 12):
    """Eight requests: _requests' four voices/texts/settings twice over, with their own generators."""
    return _requests(budgets=(budget,) * 4, seed=300) + _requests(budgets=(budget,) * 4, seed=400)


def test_a_request_samples_alike_alone_in_a_batch_of_eight_and_joining_late(t3):
    alone = [generate_speech_tokens_batch(t3, [r], sampler="keyed")[0] for r in _eight()]
    together = generate_speech_tokens_batch(t3, _eight(), sampler="keyed")
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    assert len({tuple(t.tolist()) for t in together}) == 8 and len(set(together[0].tolist())) > 5
    # request 5 joins a running batch of the others after their first check
    requests, late, got = _eight(), 5, {}
    with torch.inference_mode():
        batch = DecodeBatch(t3, check_every=3, sampler="keyed")
        batch.admit([j for j in range(8) if j != late], [r for j, r in enumerate(requests) if j != late])
        batch.advance()
        batch.admit([late], [requests[late]])
        while not batch.empty:
            for j, tokens, finished in batch.advance():
                if finished:
                    got[j] = list(tokens)
    assert [got[j] for j in range(8)] == [t.tolist() for t in alone]


def test_reruns_are_identical_and_seeds_matter(t3):
    first, second = (generate_speech_tokens_batch(t3, _eight(), sampler="keyed") for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = _eight()
    for r in other:
        r.generator.manual_seed(r.generator.initial_seed() + 1000)
    assert not torch.equal(generate_speech_tokens_batch(t3, other, sampler="keyed")[0], first[0])


def test_the_sampler_is_a_load_time_setting():
    """Multinomial draws in every preset until the keyed ones measure faster (BENCHMARKS.md 20); keyed is a
    setting the scheduler's batches follow."""
    assert {engine_settings(p, d).t3_sampler for p in PRESET_NAMES for d in ("cpu", "cuda")} == {"multinomial"}
    keyed = replace(engine_settings("fast", "cpu"), t3_sampler="keyed")
    assert new_decode_batch(_model(), keyed.t3_step, keyed.t3_sampler)(4).sampler == "keyed"
    with pytest.raises(ValueError, match="sampler"):
        DecodeBatch(_model(), sampler="gumbel")
