"""The long-text pipeline on a small random checkpoint: chunking, batching, joins, streaming, checks and retries."""

import contextlib
import logging
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from dataclasses import replace

from faster_chatterbox import pipeline
from faster_chatterbox.audio.joins import measure_joins
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.checks import audio_failure, expected_tokens, loop_length, token_failure
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.settings import TokenStreaming, engine_settings
from faster_chatterbox.tts import ChatterboxTTS
from helpers import one_intra_op_thread

SENTENCE = "This is sentence number {}, which goes on for a little while to fill the chunk."
LONG_TEXT = " ".join(SENTENCE.format(i) for i in range(1, 13))  # ~950 characters: 4 chunks of <= 300


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("pipeline") / "ckpt", seed=3, small=True)


@pytest.fixture(scope="module")
def fast(small_ckpt):
    return ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False)


@pytest.fixture(scope="module")
def fast_fp32(small_ckpt):
    """fast's engine with T3 in float32: a row's tokens do not depend on its batch mates exactly in float32;
    bf16 and int8 kernels round by batch shape, which flips rare near-tie draws (BENCHMARKS.md, section 13)."""
    settings = replace(engine_settings("fast", "cpu"), t3_precision="fp32", kv_dtype=None)
    return ChatterboxTTS.from_local(small_ckpt, device="cpu", settings=settings, watermark=False)


@pytest.fixture(scope="module")
def exact(small_ckpt):
    return ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="exact", watermark=False)


def test_long_text_is_chunked_joined_and_reproducible(fast):
    result = fast.synthesize(LONG_TEXT, seed=5, max_new_tokens=40)
    assert len(result.chunks) >= 4 and all(len(c.text) <= fast.MAX_CHARS for c in result.chunks)
    assert len(result.joins) == len(result.chunks) - 1
    assert result.audio.dtype == np.float32 and np.isfinite(result.audio).all()
    assert {"t3_s", "s3gen_s", "total_s"} <= set(result.timings)
    again = fast.synthesize(LONG_TEXT, seed=5, max_new_tokens=40)
    assert np.array_equal(again.audio, result.audio)
    report = measure_joins(result.audio, fast.sr, result.joins)
    assert report.clicks == 0, report


def test_chunk_does_not_depend_on_its_batch(fast_fp32, monkeypatch):
    """A chunk's tokens come from its own random stream: batched 8 at a time or one by one, the same. (Its
    audio too when each chunk renders alone: a joint render is of the window's chunks, see below.)"""
    fast = fast_fp32
    call = fast.synthesize(LONG_TEXT, seed=11, max_new_tokens=30).settings
    call = replace(call, solve=replace(call.solve, joint_render=False))
    together = fast.synthesize(LONG_TEXT, settings=call)
    original = fast.engine._job

    def one_by_one(*args, **kwargs):
        job = original(*args, **kwargs)
        job.window = 1
        return job

    monkeypatch.setattr(fast.engine, "_job", one_by_one)
    alone = fast.synthesize(LONG_TEXT, settings=call)
    for a, b in zip(together.chunks, alone.chunks):
        assert torch.equal(a.tokens, b.tokens)
        # the same noise and source draws; the bf16 decoder rounds differently in a batch of 4 than alone
        assert np.linalg.norm(a.audio - b.audio) < 0.05 * np.linalg.norm(b.audio)


def _concurrently(tts, calls, paused, ready, **options):
    """tts.synthesize(**options, **call) of each call on a thread of its own, started within `paused` (what holds
    their work back), which ends once ready() is true (it waits): their results."""
    together = [None] * len(calls)

    def call(k):
        together[k] = tts.synthesize(**options, **calls[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(calls))]
    with paused:
        for thread in threads:
            thread.start()
        assert ready(), "the calls did not get there"
    for thread in threads:
        thread.join(timeout=300)
    return together


def test_concurrent_calls_share_t3_batches_and_get_their_own_results(fast_fp32, monkeypatch):
    """Two calls on two threads (different texts and exaggerations) at once: their one-chunk T3 decodes
    share the scheduler's batch, and each call gets exactly what it gets alone."""
    fast = fast_fp32
    calls = [dict(text=SENTENCE.format(1), exaggeration=0.5, seed=21),
             dict(text=SENTENCE.format(2), exaggeration=0.9, seed=22)]
    alone = [fast.synthesize(max_new_tokens=40, **kw) for kw in calls]
    rows = []
    forward = fast.t3.tfmr.forward
    monkeypatch.setattr(fast.t3.tfmr, "forward", lambda x, *a, **kw: rows.append(x.shape[0]) or forward(x, *a, **kw))
    submitted, submit = threading.Semaphore(0), fast.engine.scheduler.submit
    monkeypatch.setattr(fast.engine.scheduler, "submit", lambda *a, **kw: (submit(*a, **kw), submitted.release())[0])
    # the batch starts once both calls have submitted (not a race on timing)
    together = _concurrently(fast, calls, fast.engine.scheduler.paused(),
                             lambda: all(submitted.acquire(timeout=60) for _ in calls), max_new_tokens=40)
    assert max(rows) == 4  # both CFG pairs in one backbone batch
    for a, b in zip(together, alone):
        assert torch.equal(a.chunks[0].tokens, b.chunks[0].tokens)
        assert np.array_equal(a.audio, b.audio)


def _waits_for(condition, timeout=120.0) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="module")
def batched_renders(small_ckpt):
    """fast's engine in float32 (T3 and decoder: rows equal their single renders up to float rounding) with a
    GPU's render batching: 4 rows per S3Gen batch, one render at a time."""
    settings = replace(engine_settings("fast", "cpu"), t3_precision="fp32", kv_dtype=None, s3gen_dtype=torch.float32,
                       render_batch=4, render_slots=1)
    return ChatterboxTTS.from_local(small_ckpt, device="cpu", settings=settings, watermark=False)


def test_concurrent_calls_in_different_voices_share_a_render_batch(batched_renders, monkeypatch):
    """Three calls on three threads, each its own voice, seed and text (one of two chunks), waiting for S3Gen
    together: their sequences (four chunks; under the preset's joint render the two-chunk call's are one)
    go through the flow as one padded batch, and each call's audio is what it gets alone (the unpadded path
    for one-sequence calls) within 1e-4. A fourth call with another solve (4 flow steps) waits with them and
    renders alone."""
    with one_intra_op_thread():
        _calls_share_a_render_batch(batched_renders, monkeypatch)


def _calls_share_a_render_batch(tts, monkeypatch):
    voices = [tts.conditionals_from_wav(synthetic_voice(4.0 + k, 24000, seed=30 + k), 24000, exaggeration=0.4 + 0.2 * k)
              for k in range(3)]
    calls = [dict(text=SENTENCE.format(1), voice=voices[0], seed=31),
             dict(text=SENTENCE.format(2), voice=voices[1], seed=32),
             dict(text=f"{SENTENCE.format(3)} Then a second sentence!", voice=voices[2], seed=33, max_chars=90),
             dict(text=SENTENCE.format(4), voice=voices[0], seed=34, n_timesteps=4)]
    alone = [tts.synthesize(max_new_tokens=30, **kw) for kw in calls]
    assert [len(r.chunks) for r in alone] == [1, 1, 2, 1]
    sequences = 3 if alone[2].settings.solve.joint_render else 4  # of the first three calls
    rows, inference_batch = [], tts.s3gen.inference_batch
    monkeypatch.setattr(tts.s3gen, "inference_batch",
                        lambda tokens, *a, **kw: rows.append(len(tokens)) or inference_batch(tokens, *a, **kw))
    queue = tts.engine.render_queue  # the renders start once all five chunks wait (not a race on timing)
    together = _concurrently(tts, calls, queue.paused(), lambda: _waits_for(lambda: queue.waiting == sequences + 1),
                             max_new_tokens=30)
    assert rows == [sequences]  # one batch of the first three calls' sequences; the fourth call's alone
    for a, b in zip(together, alone):
        for x, y in zip(a.chunks, b.chunks, strict=True):
            assert torch.equal(x.tokens, y.tokens)
            assert x.audio.shape == y.audio.shape and np.abs(x.audio - y.audio).max() < 1e-4
    assert len({r.chunks[0].audio.tobytes() for r in alone}) == 4  # they are different calls


@pytest.mark.parametrize("preset", ["exact", "fast_fp32"])
def test_stream_gives_the_same_audio_as_synthesize(request, preset, monkeypatch):
    """Chunk-level streaming joins the chunks as synthesize does, exactly, where both render the same
    sequences: each chunk its own render (under joint_render a stream's first chunk renders alone, as its
    audio is wanted first, while synthesize joins it to its window)."""
    tts = request.getfixturevalue(preset)
    _, call = tts._call(LONG_TEXT, None, seed=2, max_new_tokens=25)
    call = replace(call, solve=replace(call.solve, joint_render=False), token_streaming=None,
                   first_chunk_chars=tts.MAX_CHARS)  # the same chunks as synthesize
    whole = tts.synthesize(LONG_TEXT, settings=call)
    pieces = list(tts.generate_stream(LONG_TEXT, settings=call))
    assert pieces[-1].last and not any(p.last for p in pieces[:-1])
    assert [p.ready_s for p in pieces] == sorted(p.ready_s for p in pieces)
    starts = np.cumsum([0] + [len(p.audio) for p in pieces[:-1]]) / tts.sr
    assert np.allclose([p.start_s for p in pieces], starts)
    streamed = np.concatenate([p.audio for p in pieces])
    assert streamed.shape == whole.audio.shape
    assert np.abs(streamed - whole.audio).max() < 1e-5


class ScriptedT3:
    """Stands in for a model's T3 scheduler: decodes each request for real, then hands its tokens to
    script(request, tokens) -> the tokens the pipeline gets."""

    def __init__(self, tts, script=lambda request, tokens: tokens):
        self.real, self.script, self.requests, self.urgent = tts.engine.scheduler, script, [], []

    def submit(self, request, on_tokens=None, urgent=False):
        self.requests.append(request)
        self.urgent.append(urgent)
        done = Future()
        done.set_result(self.script(request, self.real.submit(request, on_tokens, urgent=urgent).result()))
        return done

    def paused(self):
        """Nothing to hold back: each submit above has decoded before it returns."""
        return contextlib.nullcontext()

    held = paused


def test_a_calls_first_chunk_is_urgent_and_its_later_ones_are_not(fast, monkeypatch):
    """The scheduler lets urgent requests go first (tests/test_scheduler.py): that is each call's chunk 0."""
    t3 = ScriptedT3(fast)
    monkeypatch.setattr(fast.engine, "scheduler", t3)
    result = fast.synthesize(LONG_TEXT, seed=3, max_new_tokens=8)
    assert len(result.chunks) > 2 and t3.urgent == [True] + [False] * (len(t3.urgent) - 1)
    list(fast.generate_stream(LONG_TEXT, seed=3, max_new_tokens=8))
    assert t3.urgent[len(result.chunks)] is True and not any(t3.urgent[len(result.chunks) + 1:])


def test_stream_starts_with_a_short_chunk(fast, monkeypatch):
    t3 = ScriptedT3(fast)
    monkeypatch.setattr(fast.engine, "scheduler", t3)
    # the plan's chunks are single sentences of ~80 characters (fast spreads a text over a batch's rows)
    pieces = fast.generate_stream(LONG_TEXT, seed=2, max_new_tokens=10, first_chunk_chars=50)
    first = next(pieces)
    assert first.chunk_index == 0 and len(t3.requests) <= 1 + fast.settings.max_batch  # chunk 0, one window ahead
    call = fast._call(LONG_TEXT, None)[1]
    chunk_0 = fast.text_tokens(pipeline.short_first(pipeline.plan_chunks(LONG_TEXT, call), 50)[0].text)
    assert torch.equal(t3.requests[0].text_tokens, chunk_0)  # the first chunk, cut short, decoded first
    rest = list(pieces)
    assert rest[-1].last and len(t3.requests) == rest[-1].chunk_index + 1
    whole = fast.synthesize(LONG_TEXT, seed=2, max_new_tokens=10)
    assert rest[-1].chunk_index + 1 > len(whole.chunks)  # the first chunk of the plan was cut


def test_token_streaming_gives_audio_every_few_tokens(fast):
    """A chunk streamed as T3 samples it: the first piece after 25 tokens, then every 50, seamless."""
    text = SENTENCE.format(1) * 2
    voice, call = fast._call(text, None, seed=3, max_new_tokens=160, token_budget_factor=None)
    job = fast.engine._job(text, voice, call)
    clock = pipeline.Clock()
    joiner = pipeline.StreamJoiner(fast.sr, clock)
    pieces = list(pipeline.stream_chunk_tokens(fast.engine, job, 0, joiner, clock))
    pieces.append(joiner.finish())
    streaming = call.token_streaming
    decoded = pipeline.T3Work(fast.engine, job, [0], attempt=0).result(clock)
    n = len(decoded[0].tokens)  # the same tokens (the chunk's own generator), special ids dropped
    # pieces as the tokens come: >= 25, then >= 50 more each (all but `lookahead`), the rest at the end
    assert len(pieces) >= 1 + (n - streaming.first_tokens - streaming.lookahead) // 60 and pieces[-1].last
    assert streaming.first_tokens * 960 <= len(pieces[0].audio) + joiner.hold < (streaming.first_tokens + 8) * 960
    audio = np.concatenate([p.audio for p in pieces])
    assert len(audio) == n * 960 and np.isfinite(audio).all()
    seams = [(int(p.start_s * fast.sr) - 480, int(p.start_s * fast.sr) + 480) for p in pieces[1:-1]]
    assert measure_joins(audio, fast.sr, seams).clicks == 0


@pytest.mark.parametrize("hold", [True, False])
def test_the_first_piece_renders_while_t3_is_held_where_the_settings_say(small_ckpt, monkeypatch, hold):
    """EngineSettings.hold_t3_for_first_piece (CPUs): the scheduler is held while a streamed call's first
    piece renders, and only then; the audio is the same either way."""
    settings = replace(engine_settings("fast", "cpu"), hold_t3_for_first_piece=hold)
    tts = ChatterboxTTS.from_local(small_ckpt, device="cpu", settings=settings, watermark=False)
    holding, held_renders = [], []
    held = tts.engine.scheduler.held

    @contextlib.contextmanager
    def spied_held():
        with held():
            holding.append(True)
            try:
                yield
            finally:
                holding.pop()

    monkeypatch.setattr(tts.engine.scheduler, "held", spied_held)
    render = tts.engine.s3gen.render
    monkeypatch.setattr(tts.engine.s3gen, "render",
                        lambda *a, **kw: held_renders.append(bool(holding)) or render(*a, **kw))
    text, call = SENTENCE.format(1) * 2, {"seed": 3, "max_new_tokens": 160, "token_budget_factor": None}
    audio = np.concatenate([p.audio for p in tts.generate_stream(text, **call)])
    assert len(held_renders) >= 3 and held_renders == [hold] + [False] * (len(held_renders) - 1)
    if hold:
        unheld = ChatterboxTTS.from_local(small_ckpt, device="cpu", watermark=False,
                                          settings=replace(settings, hold_t3_for_first_piece=False))
        assert np.array_equal(audio, np.concatenate([p.audio for p in unheld.generate_stream(text, **call)]))
    assert engine_settings("fast", "cpu").hold_t3_for_first_piece  # the CFM decoder's long first render
    assert not engine_settings("fast", "cpu", model="turbo").hold_t3_for_first_piece  # meanflow's short one
    assert not engine_settings("fast", "cpu", "meanflow").hold_t3_for_first_piece
    assert not engine_settings("fast", "cuda").hold_t3_for_first_piece


def test_concurrent_streams_give_their_solo_audio(fast_fp32):
    """Two calls streamed at once on threads, each first piece rendered with T3 held (the holds nest, and
    the other call's decode waits and goes on): both finish with their solo audio, sample for sample (float32
    T3: the same tokens; token-streamed pieces end at fixed token counts, whenever the tokens came)."""
    assert fast_fp32.settings.hold_t3_for_first_piece
    texts = [SENTENCE.format(1) * 2, SENTENCE.format(2) + " " + SENTENCE.format(3)]
    call = {"max_new_tokens": 90, "token_budget_factor": None}

    def stream(j):
        return [p.audio for p in fast_fp32.generate_stream(texts[j], seed=10 + j, **call)]

    solo = [stream(j) for j in range(2)]
    for _ in range(2):
        together = [None, None]
        threads = [threading.Thread(target=lambda j=j, out=together: out.__setitem__(j, stream(j))) for j in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads)
        for j in range(2):
            assert together[j] is not None and [len(a) for a in together[j]] == [len(a) for a in solo[j]], j
            assert np.array_equal(np.concatenate(together[j]), np.concatenate(solo[j])), j


def test_token_streamed_pieces_end_at_fixed_growing_token_counts(fast, monkeypatch):
    """TokenStreaming: the first piece after first_tokens, then piece_tokens, doubling up to
    max_piece_tokens, the chunk's rest last, each rendered with `lookahead` tokens after it, whatever tokens
    each check brings: the same renders and audio when the tokens come as they are sampled and when they all
    come at the end."""
    streaming = replace(TokenStreaming(), first_tokens=5, piece_tokens=7, max_piece_tokens=20)
    text = SENTENCE.format(1) * 2
    voice, call = fast._call(text, None, seed=3, max_new_tokens=80, token_budget_factor=None)
    job = fast.engine._job(text, voice, replace(call, token_streaming=streaming))
    rendered = []
    render = fast.engine.s3gen.render
    monkeypatch.setattr(fast.engine.s3gen, "render", lambda tokens, *a, **kw: rendered.append(len(tokens[0]))
                        or render(tokens, *a, **kw))

    def streamed():
        clock = pipeline.Clock()
        joiner = pipeline.StreamJoiner(fast.sr, clock)
        pieces = list(pipeline.stream_chunk_tokens(fast.engine, job, 0, joiner, clock))
        return np.concatenate([p.audio for p in [*pieces, joiner.finish()] if p is not None])

    as_sampled = streamed()
    renders, rendered[:] = list(rendered), []
    submit = fast.engine.scheduler.submit
    monkeypatch.setattr(fast.engine.scheduler, "submit", lambda request, on_tokens=None, **kw: submit(request, **kw))
    at_the_end = streamed()  # no token lists: the finished Future alone
    n = len(pipeline.T3Work(fast.engine, job, [0], attempt=0).result(pipeline.Clock())[0].tokens)
    ends, size = [5], 7
    while ends[-1] + size < n:
        ends.append(ends[-1] + size)
        size = min(2 * size, 20)
    ends.append(n)
    begins = [max(0, e - streaming.context) for e in [0, *ends[:-1]]]
    stops = [min(e + streaming.lookahead, n) for e in ends[:-1]] + [n]
    assert n > 40 and renders == rendered == [stop - begin for begin, stop in zip(begins, stops)]
    assert np.array_equal(as_sampled, at_the_end) and len(as_sampled) == n * fast.engine.s3gen.samples_per_token


def test_joint_sequences_are_runs_of_consecutive_chunks_within_the_cap():
    n = pipeline.JOINT_MAX_TOKENS
    tokens = {0: [1] * 10, 1: [1] * 20, 2: [], 3: [1] * 5, 4: [1] * 7, 5: [1] * (n - 12 - 2 * pipeline.JOIN_SILENCE),
              6: [1] * 2}
    assert pipeline._sequences(tokens, joint=False) == [[0], [1], [3], [4], [5], [6]]
    # the empty chunk 2 breaks the run (chunks either side of it are not neighbours), 5 fills 4's sequence
    # to the cap exactly, so 6 starts another
    assert pipeline._sequences(tokens, joint=True) == [[0, 1], [3, 4, 5], [6]]
    assert pipeline._sequences({7: [1] * (n + 5)}, joint=True) == [[7]]  # a chunk alone may exceed the cap


def test_joint_render_renders_a_window_once_and_cuts_each_chunk_out(fast, monkeypatch):
    """SolveSettings.joint_render: a window's chunks are one S3Gen sequence (the decoder prompt once), each
    chunk's audio the stretch from its first token to the next chunk's; the same T3 tokens as separate
    renders, reproducible from the seed."""
    text = " ".join(SENTENCE.format(i) for i in range(1, 4))
    voice, call = fast._call(text, None, seed=5, max_new_tokens=12, token_budget_factor=None)
    joint, call = (replace(call, solve=replace(call.solve, joint_render=on)) for on in (True, False))
    rendered = []
    render = fast.engine.s3gen.render
    monkeypatch.setattr(fast.engine.s3gen, "render", lambda tokens, *a, **kw: rendered.append(
        [len(t) for t in tokens]) or render(tokens, *a, **kw))
    apart = fast.engine.synthesize(text, voice, call, trim=False)
    together = fast.engine.synthesize(text, voice, joint, trim=False)
    n = [len(c.tokens) for c in apart.chunks]  # speech tokens of each chunk (the cap, unless a stop is drawn)
    silence = pipeline.JOIN_SILENCE
    assert len(n) == 3 and rendered == [[n[0]], [n[1]], [n[2]], [n[0] + silence + n[1] + silence + n[2]]]
    for a, b in zip(apart.chunks, together.chunks):
        assert torch.equal(a.tokens, b.tokens)
    assert [len(c.audio) for c in together.chunks] == [(n[0] + silence) * 960, (n[1] + silence) * 960, n[2] * 960]
    assert all(np.isfinite(c.audio).all() for c in together.chunks)
    again = fast.engine.synthesize(text, voice, joint, trim=False)
    assert np.array_equal(again.audio, together.audio)


@pytest.mark.parametrize("tokens", [1, 2, 41])
def test_drop_final_token_leaves_the_last_tokens_audio_out_whole_and_streamed(fast, monkeypatch, tokens):
    """EngineSettings.drop_final_token (Multilingual v3, as upstream HEAD): a chunk's audio stops one token
    early, at least one token voiced, in synthesize and in token streaming alike."""
    text, call = "One short sentence.", dict(seed=4, max_new_tokens=tokens, token_budget_factor=None)
    whole = fast.synthesize(text, **call)
    n = len(whole.chunks[0].tokens)  # speech tokens (random weights: the cap, unless a stop is drawn)
    monkeypatch.setattr(fast.engine, "settings", replace(fast.engine.settings, drop_final_token=True))
    cut = fast.synthesize(text, **call).audio
    assert len(whole.audio) == n * 960 and len(cut) == max(1, n - 1) * 960
    assert np.array_equal(cut, whole.audio[: len(cut)])  # the same render, cut
    streamed = list(fast.generate_stream(text, **call))
    assert sum(len(p.audio) for p in streamed) == len(cut)


def test_a_seeded_batched_call_leaves_the_global_rng_alone(fast):
    state = torch.get_rng_state()
    first = fast.synthesize(LONG_TEXT, seed=6, max_new_tokens=10)
    assert torch.equal(torch.get_rng_state(), state)  # its streams derive from the seed: nothing drawn globally
    torch.manual_seed(123)  # whatever the global RNG holds, the output is the same
    assert np.array_equal(fast.synthesize(LONG_TEXT, seed=6, max_new_tokens=10).audio, first.audio)


def test_a_failed_token_streamed_chunk_is_reported(fast, monkeypatch, caplog):
    stop = fast.t3.cfg.stop_speech_token
    looping = ScriptedT3(fast, lambda request, tokens: torch.tensor([5, 6, 7] * 40 + [stop]))
    monkeypatch.setattr(fast.engine, "scheduler", looping)
    with caplog.at_level(logging.WARNING, logger="faster_chatterbox.pipeline"):
        pieces = list(fast.generate_stream(SENTENCE.format(1), seed=1, max_new_tokens=20, max_retries=1))
    assert pieces[-1].last and sum(len(p.audio) for p in pieces) > 0
    assert any("streamed chunk 0 failed its token check (loop" in r.getMessage() for r in caplog.records)


def test_exact_short_text_is_one_untouched_chunk(exact):
    text = "Dr. Smith paid $3.50 on 3/14."  # no normalisation, no chunking, no retries in the exact preset
    result = exact.synthesize(text, seed=1, max_new_tokens=10)
    assert [c.text for c in result.chunks] == [text] and result.chunks[0].attempts == 1
    torch.manual_seed(1)
    assert np.array_equal(exact.generate(text, max_new_tokens=10).squeeze(0).numpy(), result.audio)


def test_fast_preset_normalises_numbers(fast):
    result = fast.synthesize("It costs $3.50.", seed=1, max_new_tokens=5)
    assert "$" not in result.chunks[0].text and "three dollars" in result.chunks[0].text


# ---- failure detection and retry ------------------------------------------------------------------------

def test_detectors_on_made_up_tokens_and_audio():
    text = "A sentence long enough for the length checks to apply to it, yes indeed, quite long."
    n = round(expected_tokens(text))
    healthy = list(np.random.default_rng(0).integers(0, 6561, n))
    assert token_failure(healthy, text, stopped=True) is None
    assert token_failure(healthy, text, stopped=False).reason.startswith("runaway")
    assert token_failure(healthy[:5], text, stopped=True).reason.startswith("truncated")
    assert token_failure(healthy * 4, text, stopped=True).reason.startswith("runaway")
    assert token_failure([], text, stopped=True).reason.startswith("no speech")
    # badness: how far past its limit; twice as short is twice as bad
    assert token_failure(healthy[:4], text, stopped=True).badness > token_failure(healthy[:8], text, stopped=True).badness
    looped = healthy[:20] + [7, 8, 9, 10] * 20 + healthy[20:40]
    assert loop_length(looped, 25) >= 80 and token_failure(looped, text, stopped=True).reason.startswith("loop")
    sr = 24000
    t = np.arange(sr * 3) / sr
    speech = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    gap = np.concatenate([speech, np.zeros(3 * sr, np.float32), speech])
    assert audio_failure(speech, sr, similarity=0.9) is None
    assert audio_failure(gap, sr, similarity=0.9).reason.startswith("silence")
    assert audio_failure(speech, sr, similarity=0.1).reason.startswith("drift")


def test_failed_chunks_are_regenerated_with_reasons(fast, monkeypatch):
    """A T3 that loops, one that stops early and a speaker that drifts: each is detected and retried."""
    stop = fast.t3.cfg.stop_speech_token
    text = " ".join(f"Here is a sentence of medium length, number {i}." for i in range(1, 5))
    chunk_tokens = [fast.text_tokens(c.text) for c in pipeline.plan_chunks(text, fast._call(text, None, max_chars=60)[1])]
    attempts = [0] * len(chunk_tokens)

    def script(request, out):
        index = next(i for i, t in enumerate(chunk_tokens) if torch.equal(t, request.text_tokens))
        attempts[index] += 1
        if attempts[index] == 1 and index == 0:  # chunk 0's first attempt loops
            return torch.tensor([5, 6, 7] * 40 + [stop])
        if attempts[index] == 1 and index == 1:  # chunk 1's stops after 3 tokens
            return torch.tensor([5, 6, 7, stop])
        n = len(request.text_tokens) - 2  # random weights never stop: stop at the expected length
        return torch.cat([out[: round(1.5 * n)], torch.tensor([stop])])

    similarities = iter([0.9, 0.1])  # the first render has chunks 2 and 3: chunk 3 drifts; then all 0.9
    t3 = ScriptedT3(fast, script)
    monkeypatch.setattr(fast.engine, "scheduler", t3)
    monkeypatch.setattr(pipeline, "_similarity", lambda engine, job, wav: next(similarities, 0.9))
    result = fast.synthesize(text, seed=4, max_new_tokens=40, max_retries=2, max_chars=60)
    assert len(result.chunks) == 4
    reasons = {c.index: c.failures for c in result.chunks}
    assert reasons[0][0].startswith("attempt 1: loop") and result.chunks[0].attempts == 2
    assert reasons[1][0].startswith("attempt 1: truncated") and result.chunks[1].attempts == 2
    drifted = [c for c in result.chunks if any("drift" in f for f in c.failures)]
    assert len(drifted) == 1 and drifted[0].attempts == 2
    assert all(c.attempts == 1 and not c.failures for c in result.chunks if c.index not in (0, 1, drifted[0].index))
    assert len(t3.requests) == 4 + 3  # the retries ran T3 again, for the three failed chunks only


def test_retries_stop_at_the_limit(fast, monkeypatch):
    stop = fast.t3.cfg.stop_speech_token
    lengths = iter([4, 1, 2])  # attempt 2 is the worst (1 token for ~100 expected), attempt 1 the least bad

    def truncated(request, tokens):
        return torch.tensor(list(range(1, 1 + next(lengths))) + [stop])

    monkeypatch.setattr(fast.engine, "scheduler", ScriptedT3(fast, truncated))
    text = SENTENCE.format(1)  # one chunk: a sentence (~120 tokens expected)
    result = fast.synthesize(text, seed=1, max_new_tokens=50, max_retries=2)
    chunk = result.chunks[0]
    assert chunk.attempts == 3 and len(chunk.failures) == 4 and chunk.failures[-1].startswith("kept attempt 1 of 3")
    assert chunk.kept == 1 and chunk.tokens.tolist() == [1, 2, 3, 4]
    assert all(f.startswith(f"attempt {k + 1}: truncated") for k, f in enumerate(chunk.failures[:3]))


# ---- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,problem", [
    ("?!... --- ,,,", "nothing to speak"),
    ("Hello\x00world", r"control character U\+0000 at position 5"),
    ("   \n\n\t ", "nothing to speak"),
])
def test_bad_text(fast, text, problem):
    with pytest.raises(ValueError, match=problem):
        fast.generate(text)


def test_a_megabyte_of_text_is_planned_in_chunks(fast):
    text = (SENTENCE.format(7) + " ") * (1_000_000 // (len(SENTENCE) + 2))
    chunks = pipeline.plan_chunks(text, fast._call(text, None, max_new_tokens=10)[1])
    assert len(chunks) > 3000 and max(len(c.text) for c in chunks) <= fast.MAX_CHARS


# ---- the meanflow decoder ------------------------------------------------------------------------------

def test_meanflow_decoder_on_base_tokens(tmp_path):
    """Turbo's 2-step decoder renders the base T3's tokens (3 silence tokens appended, as Turbo does)."""
    from faster_chatterbox.checkpoint import CheckpointError

    ckpt = write_random_checkpoint(tmp_path / "mf", seed=2, small=True, meanflow=True)
    tts = ChatterboxTTS.from_local(ckpt, device="cpu", preset="fast", watermark=False, decoder="meanflow")
    assert tts.s3gen.meanflow
    calls = []
    estimator = tts.s3gen.flow.decoder.estimator
    forward = estimator.forward
    estimator.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    result = tts.synthesize("Hello there, meanflow.", seed=1, max_new_tokens=12)
    assert len(calls) == 2  # two Euler steps, no CFG rows
    n = len(result.chunks[0].tokens)
    assert len(result.audio) == (n + 3) * 960 and np.isfinite(result.audio).all()
    (ckpt / "s3gen_meanflow.safetensors").unlink()
    with pytest.raises(CheckpointError, match="s3gen_meanflow.safetensors"):
        ChatterboxTTS.from_local(ckpt, device="cpu", decoder="meanflow")
    with pytest.raises(ValueError, match="unknown decoder"):
        ChatterboxTTS.from_local(ckpt, device="cpu", decoder="diffusion")


def test_voices_are_cached_in_memory_and_on_disk(small_ckpt, tmp_path, monkeypatch):
    import soundfile as sf

    from faster_chatterbox.audio.synthetic import synthetic_voice

    clip = tmp_path / "voice.wav"
    sf.write(clip, synthetic_voice(3.0, 24000, seed=4), 24000)
    tts = ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False)
    tts.voice_cache_dir = tmp_path / "voices"
    computed = []
    real = tts.engine.voice_from_wav
    monkeypatch.setattr(tts.engine, "voice_from_wav", lambda *a, **kw: computed.append(1) or real(*a, **kw))
    tts.prepare_conditionals(clip, exaggeration=0.3)
    first = tts.conds
    tts.prepare_conditionals(clip, exaggeration=0.7)  # memory hit: only the emotion control changes
    assert len(computed) == 1 and float(tts.conds.t3.emotion_adv) == pytest.approx(0.7)
    assert torch.equal(tts.conds.gen["prompt_token"], first.gen["prompt_token"])
    (stored,) = (tmp_path / "voices").glob("*-exact.pt")  # fast tokenizes a voice as upstream does
    other = ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False)
    other.voice_cache_dir = tmp_path / "voices"
    monkeypatch.setattr(other.engine, "voice_from_wav", lambda *a, **kw: computed.append(1) or real(*a, **kw))
    other.prepare_conditionals(clip)  # disk hit in a new instance
    assert len(computed) == 1 and torch.equal(other.conds.t3.speaker_emb, first.t3.speaker_emb)


def test_fast_inference_false_runs_upstreams_algorithms(fast, exact, monkeypatch):
    """On a fast-loaded model, fast_inference=False: no normalisation, the sequential exact decode on the
    global RNG (the same tokens as the exact preset's for the same seed), Euler 10 steps."""
    calls = []
    estimator = fast.s3gen.flow.decoder.estimator
    forward = estimator.forward
    monkeypatch.setattr(estimator, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    text = "It costs $3.50."
    slow = fast.synthesize(text, seed=6, max_new_tokens=8, fast_inference=False)
    assert [c.text for c in slow.chunks] == [text] and len(calls) == 10
    reference = exact.synthesize(text, seed=6, max_new_tokens=8)
    # the same global random stream: the first draws agree (bf16 weights move the logits slightly, so
    # later draws may not; the batched path would draw from its own generator and differ from the start)
    assert torch.equal(slow.chunks[0].tokens[:3], reference.chunks[0].tokens[:3])
    batched = fast.synthesize(text, seed=6, max_new_tokens=8)
    assert not torch.equal(batched.chunks[0].tokens[:3], reference.chunks[0].tokens[:3])
