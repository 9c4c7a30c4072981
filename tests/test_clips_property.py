"""Reference clips as users have them, through every preset on the small checkpoint (property-based): any
length from 0.5 s to 12 s, rates from 8 to 96 kHz, mono to 6 channels, WAV/FLAC/OGG. Every valid clip
speaks; a clip too short for a voice gets a clear ValueError. (A 7.3 s clip once crashed the default preset
because every test clip was a whole number of seconds.)"""

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.tts import ChatterboxTTS

RATES = [8000, 11025, 16000, 22050, 24000, 32000, 37800, 44100, 48000, 88200, 96000]
FORMATS = {"wav": "PCM_16", "flac": "PCM_24", "ogg": "VORBIS"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("clips") / "ckpt", seed=8, small=True)
    loaded = {p: ChatterboxTTS.from_local(ckpt, device="cpu", preset=p, watermark=False)
              for p in ("exact", "fast", "fastest")}
    yield loaded
    for tts in loaded.values():
        tts.close()


def _clip(folder, seconds, sr, channels, fmt, seed):
    wav = synthetic_voice(seconds, sr, seed=seed)
    data = np.stack([wav * (0.5 + 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else wav
    path = folder / f"clip-{seed}-{sr}-{channels}.{fmt}"
    sf.write(path, data, sr, subtype=FORMATS[fmt])
    return path


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.floats(0.5, 12.0), sr=st.sampled_from(RATES), channels=st.sampled_from([1, 2, 6]),
       fmt=st.sampled_from(sorted(FORMATS)), seed=st.integers(0, 1000))
@example(seconds=7.3, sr=44100, channels=1, fmt="wav", seed=1)  # the clip of the report
@example(seconds=4.87, sr=48000, channels=2, fmt="flac", seed=2)
@example(seconds=23_999 / 24000, sr=24000, channels=1, fmt="wav", seed=3)
@pytest.mark.parametrize("preset", ["exact", "fast", "fastest"])
def test_every_valid_clip_speaks(models, tmp_path_factory, preset, seconds, sr, channels, fmt, seed):
    tts = models[preset]
    path = _clip(tmp_path_factory.mktemp("c"), seconds, sr, channels, fmt, seed)
    wav = tts.generate("Hello there, this is a test.", audio_prompt_path=path, seed=seed, max_new_tokens=6)
    assert wav.shape[0] == 1 and wav.shape[1] > 0 and torch.isfinite(wav).all()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.floats(0.005, 0.499), sr=st.sampled_from(RATES), channels=st.sampled_from([1, 2]),
       fmt=st.sampled_from(sorted(FORMATS)))
def test_a_clip_too_short_for_a_voice_is_refused(models, tmp_path_factory, seconds, sr, channels, fmt):
    path = _clip(tmp_path_factory.mktemp("c"), seconds, sr, channels, fmt, 0)
    for tts in models.values():
        with pytest.raises(ValueError, match=r"at least 0\.5 s"):
            tts.generate("Hi.", audio_prompt_path=path, max_new_tokens=4)
