"""Chatterbox-Flash end to end, full size: ChatterboxFlashTTS (exact preset) against the reference package
chatterbox-flash 0.1.0 on one random checkpoint that init-random --model flash wrote and the reference's own
`from_local` loads (so this also proves the layout). Plus the facade's input errors on a small checkpoint."""

import pytest
import soundfile as sf
import torch

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts_flash import ChatterboxFlashTTS

TOKENS = 32  # two blocks: random weights never decide the stop token


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("flash") / "ckpt", seed=0, model="flash")


@pytest.mark.oracle
@pytest.mark.slow
def test_cloned_voice_waveform_matches_reference(oracle, full_checkpoint, tmp_path):
    from chatterbox_flash import ChatterboxFlashTTS as Reference

    clip = tmp_path / "voice.wav"
    sf.write(clip, synthetic_voice(7.0, 22050, seed=3), 22050)  # not 24 kHz: exercises the resamplers
    params = dict(num_steps=3, time_shift_tau=0.3, exaggeration=0.6, max_speech_tokens=TOKENS)
    text = "Hello there, how are you today."  # unchanged by either side's text normalisation
    ours = ChatterboxFlashTTS.from_local(full_checkpoint, "cpu", preset="exact", watermark=False)
    torch.manual_seed(21)
    wav = ours.generate(text, audio_prompt_path=clip, **params)
    del ours
    reference = Reference.from_local(full_checkpoint, "cpu", dtype=torch.float32)
    torch.manual_seed(21)
    expected = reference.generate(text, audio_prompt_path=str(clip), backend="torch", use_cuda_graph=False, **params)
    assert wav.shape == expected.shape and wav.dtype == torch.float32
    assert (wav - expected).abs().max() <= 1e-3, "waveform differs from the reference's"


@pytest.fixture(scope="module")
def small_tts(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("flash-small") / "ckpt", seed=1, small=True, model="flash")
    return ChatterboxFlashTTS.from_local(ckpt, "cpu", watermark=False)


def test_small_checkpoint_speaks_and_reproduces(small_tts):
    a = small_tts.generate("One, two; three.", seed=5, max_speech_tokens=40, num_steps=2)
    b = small_tts.generate("One, two; three.", seed=5, max_speech_tokens=40, num_steps=2)
    assert a.dim() == 1 and len(a) > 0 and torch.equal(a, b)
    result = small_tts.synthesize("One, two; three.", seed=5, max_new_tokens=40, num_steps=2)
    assert result.settings.flash.num_steps == 2 and len(result.chunks[0].tokens) <= 40


def test_streaming_comes_a_block_at_a_time(small_tts):
    pieces = list(small_tts.generate_stream("Streamed by blocks.", seed=3, max_new_tokens=80, num_steps=2))
    assert len(pieces) >= 2 and pieces[-1].last


@pytest.mark.parametrize("kw, error, message", [
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=2.5), TypeError, "num_steps"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(cfg_scale="1"), TypeError, "cfg_scale"),
    (dict(omnivoice_schedule_t_shift=float("inf")), ValueError, "omnivoice_schedule_t_shift"),
    (dict(pmi_uncond_prior_precompute="yes"), TypeError, "pmi_uncond_prior_precompute"),
    (dict(backend="flashinfer"), ValueError, "backend"),
    (dict(max_speech_tokens=0), ValueError, "max_new_tokens"),
])
def test_bad_arguments_are_named(small_tts, kw, error, message):
    with pytest.raises(error, match=message):
        small_tts.generate("Hello.", **kw)


def test_base_checkpoint_is_not_flash(tmp_path):
    from faster_chatterbox.checkpoint import CheckpointError

    ckpt = write_random_checkpoint(tmp_path / "base", small=True)
    with pytest.raises(CheckpointError, match="t3_flash.safetensors"):
        ChatterboxFlashTTS.from_local(ckpt, "cpu")


@pytest.mark.parametrize("text, spoken", [
    ("The CEO of an AI startup.", "The c e o of an a i startup."),
    ("A well-known e-mail.", "A well known e mail."),
    ("If 5 > 3 then 2 < 4.", "If five is greater than three then two is less than four."),
    ("It was late \u2014 very late.", "It was late, very late."),
    ("\uff26ull width \u2460.", "Full width one."),
])
def test_flash_text_forms(text, spoken):
    from faster_chatterbox.text.english import normalize_english

    assert normalize_english(text, flash=True) == spoken
    assert normalize_english(text) != spoken  # the base model's normalisation leaves these as they are
