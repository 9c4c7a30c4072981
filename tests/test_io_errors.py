"""Input and output errors a new user meets: reference clips, output files, text the English model cannot speak."""

import errno
import logging
import math
import os
import tempfile
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from faster_chatterbox.audio.io import (
    MIN_REFERENCE_SECONDS,
    SHORT_REFERENCE_SECONDS,
    check_output_path,
    check_reference_clip,
    load_audio,
    write_audio,
)
from faster_chatterbox.audio.synthetic import synthetic_voice
from faster_chatterbox.random_checkpoint import write_random_checkpoint
from faster_chatterbox.text.normalize import punc_norm
from faster_chatterbox.text.tokenizer import UNK, EnglishTokenizer, check_speakable
from faster_chatterbox.tts import ChatterboxTTS

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("small") / "ckpt", seed=1, small=True)


def _noise(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(N, channels) float32 noise, N = int(seconds * sr): a loud, quick stand-in for speech."""
    return (0.3 * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels))).astype(np.float32)


# ---- A: reference clips ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["exact", "fast", "fastest"])
def test_reference_clip_length_through_the_models(small_ckpt, tmp_path, preset):
    """Every preset: clips under the minimum (0.03 s crashed in the mel padding, 0.2 s went through silently) get
    one clear ValueError naming the clip, its length and the minimum; from the minimum on, finite embeddings."""
    tts = ChatterboxTTS.from_local(small_ckpt, device="cpu", preset=preset, watermark=False)
    for seconds in (0.03, 0.2, 0.499):
        clip = tmp_path / f"short-{seconds}.wav"
        sf.write(clip, synthetic_voice(1.0, 24000, seed=1)[: round(seconds * 24000)], 24000)
        with pytest.raises(ValueError, match=rf"reference audio {clip} is {seconds:g} s long; a voice needs at "
                                             rf"least {MIN_REFERENCE_SECONDS:g} s"):
            tts.prepare_conditionals(clip)
    for seconds in (MIN_REFERENCE_SECONDS, 1.3):
        clip = tmp_path / f"ok-{seconds}.wav"
        sf.write(clip, synthetic_voice(1.5, 16000, seed=2)[: round(seconds * 16000)], 16000)
        tts.prepare_conditionals(clip)
        assert tts.conds.t3.cond_prompt_speech_tokens.shape[1] >= 12  # 25 tokens per second
        assert torch.isfinite(tts.conds.t3.speaker_emb).all() and torch.isfinite(tts.conds.gen["embedding"]).all()


def test_check_reference_clip_on_samples(caplog):
    sr = 24000
    with caplog.at_level(logging.WARNING, logger="faster_chatterbox.audio.io"):
        check_reference_clip(_noise(SHORT_REFERENCE_SECONDS + 1, sr)[:, 0], sr, "long.wav")
        assert caplog.records == []
        check_reference_clip(_noise(2.0, sr)[:, 0], sr, "two-seconds.wav")
    assert [r.getMessage() for r in caplog.records] == [
        "reference audio two-seconds.wav is only 2.0 s long: the voice will be poor; 10 s of clean speech is best"]
    for wav, rate, problem in [
        (_noise(2.0, sr, channels=2), sr, r"must be mono samples of shape \(N,\), got shape \(48000, 2\)"),
        (_noise(2.0, sr)[:, 0], 0, "sample rate must be a positive integer, got 0"),
        (np.zeros(0, np.float32), sr, "is empty"),
        (np.full(sr, np.nan, np.float32), sr, "NaN or infinite"),
        (np.zeros(sr, np.float32), sr, "is silent"),
        (_noise(0.4996, sr)[:, 0], sr, "is 0.499 s long"),  # rounded down, never shown as the 0.5 s minimum
    ]:
        with pytest.raises(ValueError, match=rf"^reference audio clip\.wav.* {problem}"):
            check_reference_clip(wav, rate, "clip.wav")


_RATES = [8000, 11025, 16000, 22050, 24000, 37800, 44100, 48000, 96000]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seconds=st.floats(0.01, 15.0), sr_in=st.sampled_from(_RATES), channels=st.sampled_from([1, 2, 6]),
       fmt=st.sampled_from(["WAV", "FLAC", "OGG"]), sr_out=st.sampled_from([16000, 24000]))
@example(seconds=MIN_REFERENCE_SECONDS, sr_in=44100, channels=2, fmt="WAV", sr_out=24000)
@example(seconds=0.49, sr_in=11025, channels=6, fmt="OGG", sr_out=24000)
@example(seconds=7.3, sr_in=37800, channels=1, fmt="FLAC", sr_out=16000)
@example(seconds=12.7, sr_in=22050, channels=2, fmt="OGG", sr_out=24000)
def test_load_audio_properties(seconds, sr_in, channels, fmt, sr_out):
    """Any clip from the minimum on loads to finite mono float32 at `sr_out` of librosa's length, ceil(N * ratio);
    with max_seconds=10, a clip up to 10 s loads identically and a longer one as the first 10 s of the whole read,
    bit for bit. Any shorter clip is a ValueError naming it, its length and the minimum."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"clip.{fmt.lower()}")
        sf.write(path, _noise(seconds, sr_in, channels), sr_in, format=fmt)
        n_in = sf.info(path).frames
        if n_in < MIN_REFERENCE_SECONDS * sr_in:
            for limit in (None, 10.0):
                with pytest.raises(ValueError, match=rf"{path} is [\d.]+ s long; a voice needs at least 0.5 s"):
                    load_audio(path, sr_out, max_seconds=limit)
            return
        whole = load_audio(path, sr_out)
        assert whole.dtype == np.float32 and whole.ndim == 1 and np.isfinite(whole).all()
        assert whole.shape == (math.ceil(n_in * (sr_out / sr_in)),)
        start = load_audio(path, sr_out, max_seconds=10.0)
        expected = whole if n_in <= 10 * sr_in else whole[: 10 * sr_out]
        assert start.dtype == np.float32 and np.array_equal(start, expected)


def test_load_audio_reads_only_what_max_seconds_needs(tmp_path):
    """A 20-minute clip: 10 s are decoded (the old whole-file read of an hour took 13 s and 1.9 GB here)."""
    path = tmp_path / "long.wav"
    sr = 16000
    with sf.SoundFile(path, "w", sr, 1, "PCM_16") as out:
        minute = _noise(60.0, sr)
        for _ in range(20):
            out.write(minute)
    tracemalloc.start()
    start = time.perf_counter()
    wav = load_audio(path, 24000, max_seconds=10.0)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert wav.shape == (240000,)
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB: the whole clip was decoded (77 MB as float32)"
    assert elapsed < 2.0


def test_load_audio_rejects_a_bad_max_seconds(tmp_path):
    sf.write(tmp_path / "clip.wav", _noise(2.0, 16000), 16000)
    for bad in (0.1, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_seconds must be at least 0.5"):
            load_audio(tmp_path / "clip.wav", 24000, max_seconds=bad)


# ---- B: output files -----------------------------------------------------------------------------------------
def test_check_output_path_accepts_what_can_be_written_and_creates_nothing(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.wav"
    assert check_output_path(target) == target
    assert check_output_path(str(tmp_path / "out.MP3")) == tmp_path / "out.MP3"
    assert list(tmp_path.iterdir()) == []  # the missing folders are write_audio's to make; the probe is gone


def test_check_output_path_refuses_with_one_line_naming_the_path(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "folder.wav").mkdir()
    for path, problem in [
        (tmp_path / "out.aac", r"unknown audio format \(unsupported extension '\.aac'\); supported: \.wav, \.flac"),
        (tmp_path / "folder.wav", "it is a folder"),
        (tmp_path / "a-file" / "out.wav", f"{tmp_path / 'a-file'} is not a folder"),
        (tmp_path / "a-file" / "sub" / "out.wav", f"{tmp_path / 'a-file'} is not a folder"),
    ]:
        with pytest.raises(ValueError, match=f"^cannot write {path}: {problem}") as error:
            check_output_path(path)
        assert "\n" not in str(error.value)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(ValueError, match=rf"only [\d.]+ MB free in {tmp_path}, about [\d.]+ MB needed"):
        check_output_path(tmp_path / "out.wav", min_free_bytes=free + 10**9)


def test_check_output_path_really_tries_to_create_a_file(read_only_dir):
    """A folder no one can write to (a read-only file system for root, for whom permission bits do not count)."""
    for path in (read_only_dir / "out.wav", read_only_dir / "new" / "out.flac"):
        with pytest.raises(ValueError, match=f"cannot write {path}: cannot create a file in {read_only_dir} "
                                             r"\((Read-only file system|Permission denied)\)"):
            check_output_path(path)


def test_check_output_path_on_a_full_disk(tiny_fs):
    (tiny_fs / "filler").write_bytes(b"\0" * 60_000)
    with pytest.raises(ValueError, match=rf"cannot write {tiny_fs / 'out.wav'}: only 0.0\d MB free in {tiny_fs}"):
        check_output_path(tiny_fs / "out.wav")  # the default asks for 1 MiB


def test_write_audio_on_a_full_disk_names_the_file_and_leaves_nothing(tiny_fs):
    """A real ENOSPC: a 64 KiB tmpfs and 3 s of 16-bit audio (144 kB)."""
    path = tiny_fs / "out.wav"
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device") as error:
        write_audio(path, synthetic_voice(3.0, 24000), 24000)
    assert error.value.errno == errno.ENOSPC and ".part" not in str(error.value)
    assert list(tiny_fs.iterdir()) == []


def test_write_audio_errors_name_the_file_and_leave_nothing(tmp_path, monkeypatch):
    wav = synthetic_voice(0.5, 24000)
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'folder.wav'}: Is a directory"):
        write_audio(tmp_path / "folder.wav", wav, 24000)
    with pytest.raises(ValueError, match=f"cannot write {tmp_path / 'x.mp3'}: MPEG-1/2/2.5 only supports sample rates"):
        write_audio(tmp_path / "x.mp3", wav, 7000)  # libsndfile's refusal, without its "Error opening <BytesIO...>"

    def full(fd):  # ENOSPC where delayed allocation reports it, at the flush to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'out.flac'}: No space left on device"):
        write_audio(tmp_path / "out.flac", wav, 24000)
    assert [p.name for p in tmp_path.iterdir()] == ["folder.wav"]  # no .part, no partial output


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_write_audio_gives_the_usual_mode(tmp_path, umask):
    """0o666 less the umask, as any program's new files (mkstemp made every output 0o600)."""
    old = os.umask(umask)
    try:
        write_audio(tmp_path / "out.ogg", synthetic_voice(0.5, 24000), 24000)
    finally:
        os.umask(old)
    assert (tmp_path / "out.ogg").stat().st_mode & 0o777 == 0o666 & ~umask


# ---- E: text the English model cannot speak ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(small_ckpt):
    return EnglishTokenizer(small_ckpt / "tokenizer.json")


def test_unknown_characters(tokenizer):
    """The small checkpoint's tokenizer is character-level: ASCII letters, digits, punctuation and 16 accented
    letters, in the official id scheme."""
    assert tokenizer.unknown_characters("Hello, world! ça va? 42 \t\n") == []
    assert tokenizer.unknown_characters("你好你好，世界") == ["你", "好", "，", "世", "界"]
    assert tokenizer.unknown_characters("Hi 😀 © “x”") == ["😀", "©", "“", "”"]
    for ch in "你好😀":
        assert tokenizer.encode(ch) == [tokenizer.tokenizer.token_to_id(UNK)]


@pytest.mark.parametrize("text, shown", [
    ("你好，世界。", "'你' (U+4F60) at position 0, '好' (U+597D) at position 1, '世' (U+4E16) at position 3"),
    ("こんにちは", "'こ' (U+3053) at position 0"),
    ("Say مرحبا please.", "'م' (U+0645) at position 4"),
    ("".join(chr(0x4E00 + i) for i in range(12)), "... (12 distinct characters in all)"),
])
def test_check_speakable_rejects_letters_of_another_script(tokenizer, text, shown):
    with pytest.raises(ValueError, match="text contains characters the English model cannot speak: ") as error:
        check_speakable(tokenizer, text)
    assert shown in str(error.value) and "multilingual" in str(error.value)


def test_check_speakable_drops_symbols_with_one_warning(tokenizer, caplog):
    text = "I \u2764\ufe0f this \u00a9 2024 \u2014 \u201cquoted\u201d\u2026 ok \U0001F600\U0001F600!"
    with caplog.at_level(logging.WARNING, logger="faster_chatterbox.text.tokenizer"):
        spoken = check_speakable(tokenizer, text)
    # the dash, quotes and ellipsis stay: punc_norm makes them ASCII
    assert spoken == "I  this  2024 \u2014 \u201cquoted\u201d\u2026 ok !"
    assert len(caplog.records) == 1 and "'©' (U+00A9)" in caplog.records[0].getMessage()
    ids = tokenizer.encode(punc_norm(spoken))
    assert tokenizer.tokenizer.token_to_id(UNK) not in ids
    assert check_speakable(tokenizer, "Plain text.") == "Plain text."
    with pytest.raises(ValueError, match="nothing the English model can speak"):
        check_speakable(tokenizer, "\U0001F600 \u2764")


def test_unknown_characters_without_an_unk_token(tmp_path):
    """A tokenizer.json without [UNK] drops unknown characters silently: they are still reported."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(["[STOP]", "[SPACE]", "[START]", "a", "b"])}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(["[STOP]", "[SPACE]", "[START]"])
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = EnglishTokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("a你b") == [3, 4]
    assert tok.unknown_characters("a你 b") == ["你"]


def test_fast_preset_speaks_with_a_clip_of_any_length(small_ckpt, tmp_path):
    """Found on the way: the default preset fails for clips whose 24 kHz length is not a multiple of 960 samples."""
    tts = ChatterboxTTS.from_local(small_ckpt, device="cpu", preset="fast", watermark=False)
    sf.write(tmp_path / "voice.wav", synthetic_voice(1.3, 24000), 24000)
    assert torch.isfinite(tts.generate("Hi there.", audio_prompt_path=tmp_path / "voice.wav", seed=0,
                                       max_new_tokens=10)).all()
