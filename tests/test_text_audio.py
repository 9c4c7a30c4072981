"""Front-end parity: text normalisation, tokenizer, audio loading, resamplers, mel filters."""

import numpy as np
import pytest
import soundfile as sf
import torch

from faster_chatterbox.audio.io import load_audio, resample, write_audio
from faster_chatterbox.audio.mel import mel_filterbank
from faster_chatterbox.audio.sinc_resample import sinc_resample
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_tokenizer
from faster_chatterbox.text.normalize import punc_norm
from faster_chatterbox.text.tokenizer import EnglishTokenizer

TEXTS = [
    "hello world",
    "  Several   spaces\tand\nnewlines  ",
    "Wait... what\u2026 really: yes; no - maybe \u2014 or \u2013 not ,ok",
    "\u201cQuoted\u201d and \u2018single\u2019 quotes",
    "Ends with a question?",
    "ends with dash -",
    "Numbers 1, 2 and 3.50 dollars",
    "x",
]


def test_punc_norm_matches_upstream(oracle):
    from chatterbox.tts import punc_norm as upstream_punc_norm

    for text in TEXTS:
        assert punc_norm(text) == upstream_punc_norm(text)


def test_tokenizer_matches_upstream(oracle, tmp_path):
    from chatterbox.models.tokenizers import EnTokenizer

    write_tokenizer(tmp_path / "tokenizer.json")
    ours, theirs = EnglishTokenizer(tmp_path / "tokenizer.json"), EnTokenizer(str(tmp_path / "tokenizer.json"))
    vocab = ours.tokenizer.get_vocab()
    assert (vocab["[STOP]"], vocab["[UNK]"], vocab["[SPACE]"], vocab["[START]"], ours.vocab_size) == (0, 1, 2, 255, 704)
    for text in TEXTS:
        text = punc_norm(text)
        assert torch.equal(ours.text_to_tokens(text), theirs.text_to_tokens(text))
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text))


def test_tokenizer_rejects_bad_files(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        EnglishTokenizer(bad)


def test_mel_filterbank_is_librosa_exact(oracle):
    import librosa

    for sr, n_fft, n_mels, fmax in [(24000, 1920, 80, 8000), (16000, 400, 128, None), (16000, 400, 40, 8000)]:
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0, fmax=fmax)
        assert np.array_equal(mel_filterbank(sr, n_fft, n_mels, 0, fmax).numpy(), ref)


def test_load_audio_matches_librosa(oracle, tmp_path):
    import librosa

    stereo = np.stack([synthetic_voice(1.5, 44100, seed=1), synthetic_voice(1.5, 44100, seed=2)], axis=1)
    sf.write(tmp_path / "clip.wav", stereo, 44100)
    ref, _ = librosa.load(tmp_path / "clip.wav", sr=24000)
    ours = load_audio(tmp_path / "clip.wav", 24000)
    assert np.array_equal(ours, ref)
    assert np.array_equal(resample(ours, 24000, 16000), librosa.resample(ref, orig_sr=24000, target_sr=16000))


def test_sinc_resample_matches_torchaudio(oracle):
    import torchaudio

    wav = torch.from_numpy(synthetic_voice(1.3, 24000))[None]
    ref = torchaudio.transforms.Resample(24000, 16000)(wav)
    assert torch.equal(sinc_resample(wav, 24000, 16000), ref)


@pytest.mark.parametrize("content,problem", [(None, "does not exist"), (b"", "cannot be read"), ("silent", "silent"),
                                             ("empty", "empty")])
def test_load_audio_errors(tmp_path, content, problem):
    path = tmp_path / "clip.wav"
    if content == "silent":
        sf.write(path, np.zeros(24000, dtype=np.float32), 24000)
    elif content == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 24000)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        load_audio(path, 24000)


def test_write_audio_is_atomic(tmp_path):
    wav = synthetic_voice(0.5, 24000)
    write_audio(tmp_path / "out.flac", wav, 24000)
    back, sr = sf.read(tmp_path / "out.flac", dtype="float32")
    assert sr == 24000 and back.shape == wav.shape
    with pytest.raises(ValueError, match="unknown audio format"):
        write_audio(tmp_path / "out.xyz", wav, 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.flac"]  # no partial files left behind


@pytest.mark.parametrize("suffix, sr_out, tolerance", [
    (".wav", 24000, 1e-4), (".flac", 24000, 1e-4), (".ogg", 24000, 0.05), (".opus", 24000, 0.05), (".mp3", 24000, 0.05),
])
def test_write_audio_round_trips_each_format(tmp_path, suffix, sr_out, tolerance):
    wav = synthetic_voice(1.0, 24000)
    path = tmp_path / f"out{suffix}"
    write_audio(path, wav, 24000)
    back, sr = sf.read(path, dtype="float32")
    assert sr == sr_out and abs(back.size - wav.size) <= 2400  # codecs pad by up to a frame or two
    if tolerance < 1e-3:
        assert np.abs(back - wav).max() < tolerance
    else:  # lossy: same loudness, strongly correlated once aligned
        lag = int(np.argmax(np.correlate(back[:12000], wav[:6000], mode="valid")))
        aligned = back[lag : lag + 12000]
        assert np.corrcoef(aligned, wav[:12000])[0, 1] > 0.9
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_write_audio_options_and_errors(tmp_path):
    write_audio(tmp_path / "f.wav", np.array([0.5, 2.0, -3.0], np.float32), 24000, float_wav=True)
    assert sf.info(tmp_path / "f.wav").subtype == "FLOAT" and sf.read(tmp_path / "f.wav")[0][1] == 2.0
    write_audio(tmp_path / "clip.wav", np.array([0.5, 2.0, -3.0], np.float32), 24000)
    assert sf.read(tmp_path / "clip.wav")[0].tolist()[1:] == [1.0 - 2**-15, -1.0]  # PCM clips to [-1, 1]
    write_audio(tmp_path / "o.opus", synthetic_voice(0.5, 22050), 22050)
    assert sf.info(tmp_path / "o.opus").samplerate == 24000  # next Opus rate up
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, wav, match in [("x.aac", np.ones(10), "supported: .wav, .flac"), ("e.wav", np.zeros(0), "empty"),
                             ("n.flac", np.array([np.nan]), "NaN")]:
        with pytest.raises(ValueError, match=match):
            write_audio(tmp_path / name, wav, 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written on error
