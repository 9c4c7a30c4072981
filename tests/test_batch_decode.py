"""Batched T3 decoding: every request in a batch decodes as it would alone (logits, tokens, early stops)."""

from __future__ import annotations

import pytest
import torch

from dataclasses import fields, replace

from faster_chatterbox.engine.batch_decode import (BatchDecoder, DecodeRequest, PrefixCache, decode_alone,
                                                 generate_speech_tokens_batch)
from faster_chatterbox.engine.sampling import RowSamplingParams, SamplingParams, next_token_probs, next_token_probs_rows
from faster_chatterbox.engine.t3_decode import generate_speech_tokens
from faster_chatterbox.models.t3 import T3, T3Cond, T3Config

from helpers import rel_error
from test_t3 import GEN_CASES, SMALL_LLAMA, _inputs, _randomize

pytestmark = pytest.mark.usefixtures("single_thread")

STOP = 6562


def _model(stop_from: int | None = None) -> T3:
    """Small random T3; with `stop_from`, the stop token becomes likely from that speech position on
    (a large offset along one direction of the residual stream, which the stop token's head row follows)."""
    t3 = T3(T3Config(llama=SMALL_LLAMA)).eval()
    _randomize(t3, 0)
    if stop_from is not None:
        with torch.no_grad():
            direction = torch.randn(SMALL_LLAMA.dim, generator=torch.Generator().manual_seed(9))
            t3.speech_pos_emb.emb.weight[stop_from:] += 20 * direction / direction.norm()
            stop_row = t3.tfmr.norm.weight * direction
            t3.speech_head.weight[STOP] = 0.3 * stop_row / stop_row.norm()
    return t3


@pytest.fixture(scope="module")
def t3():
    return _model()


def _requests(budgets=(20, 25, 30, 35), seed: int = 100) -> list[DecodeRequest]:
    """Four requests with different texts (lengths 10..31), voices (one without a speech prompt, so its
    prefix is 32 positions shorter), exaggerations, sampling settings (the last without CFG) and budgets."""
    requests = []
    for k, (kw, budget) in enumerate(zip(GEN_CASES, budgets)):
        text, cond = _inputs(seed=k + 1, text_len=10 + 7 * k)
        cond["emotion_adv"] = (0.3 + 0.2 * k) * torch.ones(1, 1, 1)
        if k == 2:
            del cond["cond_prompt_speech_tokens"]
        requests.append(DecodeRequest(T3Cond(**cond), text, SamplingParams(**kw), max_new_tokens=budget,
                                      generator=torch.Generator().manual_seed(seed + k)))
    return requests


def _solo(t3: T3, r: DecodeRequest, seed: int) -> torch.Tensor:
    return decode_alone(t3, replace(r, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("cases", [GEN_CASES, [kw for kw in GEN_CASES if kw["top_p"] == 1.0]])
def test_row_processors_bit_identical_to_single_row(cases):
    """Mixed settings (identity ones included: no CFG, penalty 1, temperature 1, min_p 0, top_p 1)."""
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(len(cases), 2, 8194, generator=g)
    seen = torch.rand(len(cases), 8194, generator=g) < 0.01
    params = [SamplingParams(**kw) for kw in cases]
    ref = torch.cat([next_token_probs(logits[j, : 2 if p.cfg_weight > 0 else 1], seen[j : j + 1], p)
                     for j, p in enumerate(params)])
    uncond = torch.stack([logits[j, 1 if p.cfg_weight > 0 else 0] for j, p in enumerate(params)])
    got = next_token_probs_rows(logits[:, 0], uncond, seen, RowSamplingParams.stack(params))
    assert torch.equal(got, ref)


@pytest.mark.parametrize("shared_voice", [False, True])
@pytest.mark.parametrize("cached", [False, True, "shared"])
def test_teacher_forced_logits_match_single_sequence(t3, cached, shared_voice):
    """Rows of different prefix lengths, voices and CFG settings, one joining the running batch at step 3 and
    one dropped at step 6: each row's logits at every step are those of its sequence run alone. cached: the
    voices' prefixes come from a PrefixCache (shared_voice: requests 0 and 3 speak in one voice, the CFG pair
    of one and the single row of the other copying one entry); "shared": and are attended in place
    (SharedPrefix: the rows' caches hold their text and speech only, a group per voice)."""
    requests = _requests()
    if shared_voice:
        requests[3] = replace(requests[3], cond=requests[0].cond)
    steps, join_at, joining, drop_at, dropped = 12, 3, 2, 6, 1
    forced = torch.randint(0, 6561, (len(requests), steps), generator=torch.Generator().manual_seed(2))
    prefixes = PrefixCache(t3) if cached else None
    with torch.inference_mode():
        ref = [t3(r.cond, r.text_tokens, forced[j], cfg=r.rows == 2) for j, r in enumerate(requests)]
        decoder = BatchDecoder(t3, prefixes, shared_prefix_slots=1 if cached == "shared" else None)
        live = [j for j in range(len(requests)) if j != joining]
        cond, uncond = decoder.admit([requests[j] for j in live])
        assert decoder.sharing == (cached == "shared")
        # left padding of the shorter prefixes (shared: of the texts alone, the voices being of one length)
        assert decoder.seq_start.tolist() == [21, 21, 14, 14, 0]
        got = [[] for _ in requests]
        for i in range(steps + 1):
            for p, j in enumerate(live):
                got[j].append(torch.stack((cond[p], uncond[p])))
            if i == steps:
                break
            if i == join_at:  # the request without a speech prompt (the shortest prefix) joins
                c, u = decoder.admit([requests[joining]])
                got[joining].append(torch.stack((c[0], u[0])))
                live.append(joining)
                # its prefix (shared: its text) ends just before the next slot
                assert decoder.seq_start.tolist()[-1] == (7 if cached == "shared" else 39) + join_at
                voices = len({id(requests[j].cond) for j in live})  # the joiner's among them: another group
                assert cached != "shared" or decoder.shared.members.shape[0] == voices
            if i == drop_at:
                decoder.keep([p for p, j in enumerate(live) if j != dropped])
                live.remove(dropped)
            cond, uncond = decoder.step(torch.stack([forced[j, len(got[j]) - 1] for j in live])[:, None])
    for j, r in enumerate(requests):
        rows = torch.stack(got[j], dim=1)[: ref[j].shape[0]]  # (R, steps taken + 1, V)
        expected = {dropped: drop_at + 1, joining: steps - join_at + 1}.get(j, steps + 1)
        assert len(got[j]) == expected
        assert rel_error(rows, ref[j][:, : rows.shape[1]]) < 1e-5
    assert prefixes is None or len(prefixes) == len({id(r.cond) for r in requests})


def test_prefix_cache_keeps_the_recent_voices_while_they_live(t3):
    """At most `size` voices, the least recently used dropped first; a voice that is gone leaves the cache
    (so a new voice at its address is never served its keys)."""
    conds = [r.cond for r in _requests()]
    cache = PrefixCache(t3, size=2)
    with torch.inference_mode():
        first = cache.get(conds[0])
        assert cache.get(conds[0]) is first and first.batch == 1
        assert first.max_seq_len == t3.cond_embeds(conds[0]).shape[1]
        cache.get(conds[1])
        cache.get(conds[0])  # now the most recent
        cache.get(conds[2])
        assert len(cache) == 2 and cache.get(conds[0]) is first  # conds[1] went
        del conds[0], first
        import gc
        gc.collect()
        assert len(cache) == 1


@pytest.mark.parametrize("check_every", [1, 4])
def test_sampled_tokens_match_single_sequence(t3, check_every):
    requests = _requests()
    ref = [_solo(t3, r, 100 + j) for j, r in enumerate(requests)]
    got = generate_speech_tokens_batch(t3, requests, check_every=check_every)
    assert [len(t) for t in got] == [20, 25, 30, 35]
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
        assert len(set(a.tolist())) > 5  # really sampling
    # A request's own generator seeded like the global RNG draws what upstream's decode draws from it.
    torch.manual_seed(100)
    r = requests[0]
    assert torch.equal(ref[0], generate_speech_tokens(t3, r.cond, r.text_tokens, max_new_tokens=r.max_new_tokens,
                                                      temperature=r.sampling.temperature,
                                                      cfg_weight=r.sampling.cfg_weight))


def test_tokens_are_reported_as_they_come(t3):
    """on_tokens sees each request's tokens grow, every check_every steps, ending with its whole output."""
    seen: dict[int, list[list[int]]] = {}
    got = generate_speech_tokens_batch(t3, _requests(), check_every=4,
                                       on_tokens=lambda j, tokens: seen.setdefault(j, []).append(list(tokens)))
    for j, tokens in enumerate(got):
        reports = seen[j]
        assert reports[-1] == tokens.tolist()
        assert all(len(a) < len(b) and b[: len(a)] == a for a, b in zip(reports, reports[1:]))
        assert len(reports[0]) == 4


def test_without_generators_reproducible_from_global_seed(t3):
    def run():
        torch.manual_seed(3)
        requests = _requests(budgets=(8, 8, 8, 8))
        for r in requests:
            r.generator = None
        return generate_speech_tokens_batch(t3, requests)

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("check_every", [1, 3])
def test_rows_finish_independently(check_every, monkeypatch):
    t3 = _model(stop_from=10)
    requests = _requests(budgets=(40, 40, 8, 40), seed=7)
    rows = sum(r.rows for r in requests)
    ref = [_solo(t3, r, 7 + j) for j, r in enumerate(requests)]
    cache_rows = []  # the batch's cache rows at each backbone forward
    forward = t3.tfmr.forward
    monkeypatch.setattr(t3.tfmr, "forward", lambda x, pos, cache, **kw: (cache_rows.append(cache.batch),
                                                                         forward(x, pos, cache, **kw))[1])
    got = generate_speech_tokens_batch(t3, requests, check_every=check_every)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    lengths = [len(t) for t in got]
    stopped = [len(t) for t in got if t[-1] == STOP]
    assert stopped and min(stopped) < max(lengths)  # one stopped on the stop token while others went on
    assert all(STOP not in t[:-1].tolist() for t in got)
    assert lengths[2] == 8 and got[2][-1] != STOP and max(lengths) == 40  # a budget ends a row too
    assert cache_rows[0] == rows and cache_rows[-1] < rows  # finished rows left the KV cache


def _bad(t3, **change) -> list[DecodeRequest]:
    requests = _requests(budgets=(4, 4, 4, 4))
    sampling = {f.name for f in fields(SamplingParams)}
    for name, value in change.items():
        value = value(requests[1]) if callable(value) else value
        if name in sampling:
            requests[1].sampling = replace(requests[1].sampling, **{name: value})
        else:
            setattr(requests[1], name, value)
    return requests


@pytest.mark.parametrize("change, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(cfg_weight=-0.5), "cfg_weight"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(min_p=1.5), "min_p"),
    (dict(top_p=-0.1), "top_p"),  # 0 is valid: the top token alone, as upstream
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=5000), "max_new_tokens"),
    (dict(text_tokens=torch.zeros(0, dtype=torch.long)), "text_tokens"),
    (dict(text_tokens=lambda r: r.text_tokens[None]), "text_tokens"),
    (dict(text_tokens=lambda r: r.text_tokens.float()), "text_tokens"),
    (dict(text_tokens=torch.tensor([255, 704, 0])), "text token ids"),
    (dict(cond=lambda r: T3Cond(speaker_emb=torch.randn(2, 256))), "one voice"),
])
def test_bad_requests_raise(t3, change, match):
    with pytest.raises(ValueError, match=rf"request 1: .*{match}"):
        generate_speech_tokens_batch(t3, _bad(t3, **change))


def test_bad_batch_raises(t3):
    with pytest.raises(ValueError, match="non-empty"):
        generate_speech_tokens_batch(t3, [])
    with pytest.raises(ValueError, match="check_every"):
        generate_speech_tokens_batch(t3, _requests(), check_every=0)
