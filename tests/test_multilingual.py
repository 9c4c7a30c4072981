"""Chatterbox Multilingual: the tokenizer and front-ends, loading, errors, and generate() against upstream
(0.1.7 for the v2 T3, HEAD for v3: tests/upstream_head.py).

Checkpoints are init-random --model multilingual ones. For upstream's waveform the T3 is small but has
upstream's aligned heads (14 layers of 16 heads; upstream's builder is patched to those sizes, as
tests/test_t3.py does), S3Gen and the voice encoder are full size (upstream builds them so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from faster_chatterbox.checkpoint import CheckpointError
from faster_chatterbox.config import ChatterboxConfig
from faster_chatterbox.models.t3 import T3Config
from faster_chatterbox.random_checkpoint import avoid_invalid_speech_ids, write_random_checkpoint
from faster_chatterbox.text.frontends import MissingExtraError, korean_jamo
from faster_chatterbox.text.multilingual import TOKENIZER_FILE, MultilingualTokenizer
from faster_chatterbox.tts_multilingual import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS

from test_alignment_guard import GUARD_LLAMA

pytestmark = pytest.mark.usefixtures("single_thread")

SENTENCES = {
    "en": "Hello there, it's 5 o'clock!",
    "fr": "Où est la bibliothèque? Très bien.",
    "de": "Größe und Übermut",
    "ja": "今日は良い天気ですね。カタカナも、ひらがなも。",
    "ko": "안녕하세요, 세계! 값",
    "zh": "你好，世界。我们去北京",
    "he": "שלום עולם",
    "ru": "Привет, мир! Ёлка.",
    "ar": "مرحبا بالعالم",
    "hi": "नमस्ते दुनिया",
    "el": "Καλημέρα κόσμε",
    "tr": "İstanbul'da ılık bir gün",
}
TOKENS = 30  # decode steps of the waveform comparison


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("mtl") / "ckpt", seed=0, small=True, model="multilingual")


def test_tokenizer_matches_upstream(oracle, small_ckpt):
    """Same ids as upstream's MTLTokenizer on the same vocabulary, after upstream's punc_norm; the helpers
    not installed here are skipped by both (strict=False); Cangjie5_TC.json is handed to upstream's
    converter in place of its hub download."""
    import chatterbox.models.tokenizers.tokenizer as upstream_tokenizer
    from chatterbox.mtl_tts import punc_norm as upstream_punc_norm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(upstream_tokenizer, "hf_hub_download",
                   lambda repo_id, filename, cache_dir: str(Path(cache_dir) / filename))
        theirs = upstream_tokenizer.MTLTokenizer(str(small_ckpt / TOKENIZER_FILE))
    assert len(theirs.cangjie_converter.word2cj) > 20000
    ours = MultilingualTokenizer(small_ckpt / TOKENIZER_FILE, strict=False)
    for language, text in SENTENCES.items():
        ref = theirs.text_to_tokens(upstream_punc_norm(text), language_id=language)[0].tolist()
        assert ours.encode_chunk(text, language) == ref, language
        assert 1 not in ref, (language, ref)  # no [UNK]: the random vocabulary covers every script
    assert ours.encode("Plain text") == theirs.encode("Plain text")  # no language: no tag, no front-end


def test_korean_jamo_decomposition():
    assert korean_jamo(" 값 ") == "\u1100\u1161\u11b9"  # leading consonant, vowel, trailing cluster
    assert korean_jamo("가a") == "\u1100\u1161a"  # no trailing consonant; other text untouched


def test_missing_helper_names_the_extra(small_ckpt):
    pytest.importorskip("pykakasi")
    strict = MultilingualTokenizer(small_ckpt / TOKENIZER_FILE)
    assert strict.encode_chunk("今日は", "ja")  # installed here
    with pytest.raises(MissingExtraError, match=r"faster-chatterbox\[he\]"):
        strict.encode_chunk("שלום", "he")


def test_bad_language_lists_the_supported_ones(small_ckpt):
    tts = ChatterboxMultilingualTTS.from_local(small_ckpt, device="cpu", watermark=False)
    with pytest.raises(ValueError, match="unsupported language_id 'xx'.*ar, da, de"):
        tts.generate("Hi.", "xx")
    with pytest.raises(TypeError, match="language_id is required"):
        tts.synthesize("Hi.")
    with pytest.raises(ValueError, match="unknown t3_model"):
        ChatterboxMultilingualTTS.from_local(small_ckpt, device="cpu", t3_model="v9")
    assert set(tts.get_supported_languages()) == set(SUPPORTED_LANGUAGES) and len(SUPPORTED_LANGUAGES) == 23
    # English normalisation for "en" only; a long text split by the language's sentences
    result = tts.synthesize("二つの文です。もう一つの文です。" * 6, "JA", seed=3, max_new_tokens=4, max_chars=40)
    assert len(result.chunks) >= 2 and all(c.text.endswith("。") and " " not in c.text for c in result.chunks)
    assert result.settings.language == "ja"
    tts.close()


def test_v3_and_other_t3_files_decode_as_head_and_bad_pickles_are_refused(small_ckpt, tmp_path):
    v2 = ChatterboxMultilingualTTS.from_local(small_ckpt, device="cpu", watermark=False)
    v3 = ChatterboxMultilingualTTS.from_local(small_ckpt, device="cpu", t3_model="v3", watermark=False)
    assert v2.settings.alignment_guard and not v3.settings.alignment_guard
    assert not v2.settings.drop_final_token and v3.settings.drop_final_token
    assert not torch.equal(v2.t3.speech_head.weight, v3.t3.speech_head.weight)
    v2.close(), v3.close()
    pack = tmp_path / "t3_zh_finetune.safetensors"  # any T3 file but v2's (a language pack's): HEAD's rules
    pack.symlink_to(small_ckpt / "t3_mtl23ls_v3.safetensors")
    tuned = ChatterboxMultilingualTTS.from_local(small_ckpt, device="cpu", t3_model=pack, watermark=False)
    assert (tuned.t3_version, tuned.settings.alignment_guard, tuned.settings.drop_final_token) == ("v3", False, True)
    tuned.close()
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in small_ckpt.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "ve.pt").unlink()
    torch.save({"weights": argparse.Namespace(x=1)}, bad / "ve.pt")  # a foreign object: unpickling runs code
    with pytest.raises(CheckpointError, match="ve.pt needs objects other than tensors"):
        ChatterboxMultilingualTTS.from_local(bad, device="cpu")
    (bad / "ve.pt").unlink()
    torch.save([torch.zeros(1)], bad / "ve.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        ChatterboxMultilingualTTS.from_local(bad, device="cpu")
    (bad / "t3_mtl23ls_v3.safetensors").unlink()
    with pytest.raises(CheckpointError, match="t3_mtl23ls_v3.safetensors not found"):
        ChatterboxMultilingualTTS.from_local(bad, device="cpu", t3_model="v3")


@pytest.fixture(scope="module")
def parity_ckpt(tmp_path_factory):
    """A checkpoint both sides build: a 14-layer narrow T3 (v2 and v3), full-size S3Gen and voice encoder."""
    config = ChatterboxConfig(t3=T3Config(llama=GUARD_LLAMA))
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("mtl-parity") / "ckpt", seed=1, model="multilingual",
                                   config=config)
    avoid_invalid_speech_ids(ckpt)
    return ckpt


def _upstream(ckpt: Path, load):
    """Upstream's ChatterboxMultilingualTTS from `load(ckpt)`, built at the checkpoint's T3 size, its
    decode capped at TOKENS and its output not watermarked."""
    import chatterbox.models.t3.modules.cond_enc as cond_enc_mod
    import chatterbox.models.tokenizers.tokenizer as upstream_tokenizer
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules.perceiver import Perceiver as UpPerceiver

    from test_t3 import _hf_llama_dict

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(upstream_tokenizer, "hf_hub_download",  # the checkpoint's Cangjie table, not the hub's
                   lambda repo_id, filename, cache_dir: str(Path(cache_dir) / filename))
        mp.setitem(llama_configs.LLAMA_CONFIGS, "Llama_520M", _hf_llama_dict(GUARD_LLAMA))
        mp.setattr(cond_enc_mod, "Perceiver", lambda: UpPerceiver(32, GUARD_LLAMA.dim, GUARD_LLAMA.dim, 4))
        upstream = load(ckpt)
    upstream.watermarker.apply_watermark = lambda wav, sample_rate: wav  # compare before watermarking
    t3_inference = upstream.t3.inference
    upstream.t3.inference = lambda **kw: t3_inference(**{**kw, "max_new_tokens": TOKENS})  # upstream fixes 1000
    return upstream


def _same_waveform(ours, upstream, upstream_kwargs: dict) -> None:
    text = "今日は良い天気です"
    torch.manual_seed(42)
    ref = upstream.generate(text, language_id="ja", **upstream_kwargs)
    torch.manual_seed(42)
    wav = ours.generate(text, "ja", max_new_tokens=TOKENS)
    ours.close()
    assert wav.shape == ref.shape and wav.dtype == torch.float32
    assert (wav - ref).abs().max() <= 1e-3, "waveform differs from upstream's"


@pytest.mark.slow  # full-size S3Gen on both sides: about a minute on a quiet 2-core machine
def test_generate_matches_upstream(oracle, parity_ckpt):
    """v2: the exact preset's waveform equals upstream 0.1.7's within 1e-3 (float32 on both sides, the same
    global seed, upstream's defaults: repetition_penalty 2.0, the alignment guard), through the Japanese
    front-end."""
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS as Upstream

    upstream = _upstream(parity_ckpt, lambda ckpt: Upstream.from_local(ckpt, "cpu"))
    ours = ChatterboxMultilingualTTS.from_local(parity_ckpt, device="cpu", preset="exact", watermark=False,
                                                strict_text=False)
    _same_waveform(ours, upstream, {})


@pytest.mark.slow
def test_v3_generate_matches_upstream_head(oracle, parity_ckpt):
    """v3: the exact preset's waveform (its defaults: repetition penalty 1.2, no alignment guard, the last
    token not voiced) equals upstream HEAD's generate with HEAD's defaults, HEAD as tests/upstream_head.py
    reproduces it on 0.1.7."""
    from upstream_head import emulate_multilingual_v3

    upstream = _upstream(parity_ckpt, emulate_multilingual_v3)
    ours = ChatterboxMultilingualTTS.from_local(parity_ckpt, device="cpu", t3_model="v3", preset="exact",
                                                watermark=False, strict_text=False)
    assert not ours.settings.alignment_guard and ours.settings.drop_final_token
    _same_waveform(ours, upstream, {"repetition_penalty": 1.2})  # HEAD's default, not 0.1.7's


def test_wide_scripts_get_their_token_budget():
    """A chunk's expected speech length counts CJK characters as syllables, so the fast preset's token budget
    does not cut Chinese or Japanese short."""
    from faster_chatterbox.checks import expected_tokens

    assert expected_tokens("你好世界") == pytest.approx(3 * expected_tokens("abcd"))
    assert expected_tokens("hello") == pytest.approx(expected_tokens("world"))
