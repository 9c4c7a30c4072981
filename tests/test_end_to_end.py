"""End to end, full size: the exact preset against upstream chatterbox-tts on one random checkpoint.

Our init-random writes the checkpoint in the official layout; upstream's own `from_local` loads it
(strictly for ve and t3, non-strictly for s3gen, as upstream does), so this also proves the layout.
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts import ChatterboxTTS
from helpers import rel_error

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

TOKENS = 30  # decode steps per comparison; random weights never sample the stop token


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("full") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def models(oracle, checkpoint):
    from chatterbox.tts import ChatterboxTTS as Upstream

    upstream = Upstream.from_local(checkpoint, "cpu")
    upstream.watermarker.apply_watermark = lambda wav, sample_rate: wav  # compare before watermarking
    t3_inference = upstream.t3.inference
    upstream.t3.inference = lambda **kw: t3_inference(**{**kw, "max_new_tokens": TOKENS})  # upstream fixes 1000
    ours = ChatterboxTTS.from_local(checkpoint, device="cpu", preset="exact", watermark=False)
    return ours, upstream


def _assert_same_conds(ours, theirs):
    assert torch.equal(ours.t3.cond_prompt_speech_tokens.long(), theirs.t3.cond_prompt_speech_tokens.long())
    assert rel_error(ours.t3.speaker_emb, theirs.t3.speaker_emb) < 1e-4
    assert torch.equal(ours.gen["prompt_token"].long(), theirs.gen["prompt_token"].long())
    assert rel_error(ours.gen["prompt_feat"], theirs.gen["prompt_feat"]) < 1e-5
    assert rel_error(ours.gen["embedding"], theirs.gen["embedding"]) < 1e-4


def test_builtin_voice_generate_matches_upstream(models):
    ours, upstream = models
    _assert_same_conds(ours.conds, upstream.conds)
    text = "The quick brown fox jumps over the lazy dog."
    torch.manual_seed(1234)
    ref = upstream.generate(text)
    torch.manual_seed(1234)
    wav = ours.generate(text, max_new_tokens=TOKENS)
    assert wav.shape == ref.shape and wav.dtype == torch.float32
    assert (wav - ref).abs().max() <= 1e-3, "waveform differs from upstream's"


def test_cloned_voice_generate_matches_upstream(models, tmp_path):
    ours, upstream = models
    clip = tmp_path / "voice.wav"
    sf.write(clip, synthetic_voice(7.0, 22050, seed=3), 22050)  # not 24 kHz: exercises the resamplers
    params = dict(exaggeration=0.7, cfg_weight=0.3, temperature=0.9, repetition_penalty=1.3, min_p=0.1, top_p=0.9)
    torch.manual_seed(7)
    ref = upstream.generate("Cloned, with other settings!", audio_prompt_path=str(clip), **params)
    torch.manual_seed(7)
    wav = ours.generate("Cloned, with other settings!", audio_prompt_path=clip, max_new_tokens=TOKENS, **params)
    _assert_same_conds(ours.conds, upstream.conds)
    assert wav.shape == ref.shape
    assert (wav - ref).abs().max() <= 1e-3


def test_conds_file_round_trips_with_upstream(models, tmp_path):
    from chatterbox.tts import Conditionals as UpstreamConditionals

    from faster_chatterbox.tts import Conditionals

    ours, _ = models
    ours.conds.save(tmp_path / "ours.pt")
    theirs = UpstreamConditionals.load(tmp_path / "ours.pt")
    _assert_same_conds(ours.conds, theirs)
    theirs.save(tmp_path / "theirs.pt")
    _assert_same_conds(Conditionals.load(tmp_path / "theirs.pt"), theirs)


def test_watermark_matches_upstream(models):
    pytest.importorskip("perth")
    from faster_chatterbox.watermark import Watermarker

    _, upstream = models
    wav = synthetic_voice(1.0, 24000, seed=5)
    ours = Watermarker()(wav, 24000)
    ref = type(upstream.watermarker)().apply_watermark(wav, sample_rate=24000)
    assert np.abs(ours - ref).max() < 1e-6 and np.abs(ours - wav).max() > 1e-5  # it changed the audio, identically
