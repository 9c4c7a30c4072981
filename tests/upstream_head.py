"""Upstream's HEAD for the models PyPI's 0.1.7 lacks (Multilingual's v3 T3, Nano), as parity references.

HEAD (github resemble-ai/chatterbox 5de7a54, "Update ChatterboxNano (#542)") is not installable here (no
network but the package registries), so these functions load upstream 0.1.7 (the oracle venv) and apply
exactly what HEAD's source changes for each model, found by diffing HEAD's src/chatterbox against 0.1.7's:

  Multilingual v3 (mtl_tts.py, models/t3/t3.py): from_local(t3_model="v3") reads t3_mtl23ls_v3.safetensors;
    T3.inference has no alignment stream analyzer (nor output_attentions); generate's repetition_penalty
    defaults to 1.2 (the callers pass it); generate cuts the final speech token's audio:
    wav[: max(1, n_tokens - 1) * (S3GEN_SR // S3_TOKEN_RATE)].
  Nano (tts_turbo.py, models/t3/llama_configs.py): from_local(nano=True) builds "GPT2_small" (GPT2_medium with
    n_embd = hidden_size = 768, n_head 12, n_layer 12) and reads t3_nano_v1.safetensors; nothing else.

Checked once against HEAD's own code (2026-12-02, HEAD's src on PYTHONPATH in the oracle venv, the tests'
checkpoints and seeds): the same waveform to the last bit for both models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

V2_FILE, V3_FILE = "t3_mtl23ls_v2.safetensors", "t3_mtl23ls_v3.safetensors"


def _redirected(load, old: str, new: str):
    """A safetensors loader that reads `new` where 0.1.7 reads `old`."""
    return lambda path, *args, **kwargs: load(Path(path).with_name(new) if Path(path).name == old else path,
                                              *args, **kwargs)


def emulate_multilingual_v3(ckpt: Path):
    """HEAD's ChatterboxMultilingualTTS.from_local(ckpt, "cpu", t3_model="v3"), and its generate's cut.
    Any further patching of the build (a small T3's config) is the caller's, around this call."""
    import chatterbox.mtl_tts as mtl
    from chatterbox.models.s3gen.const import S3GEN_SR
    from chatterbox.models.s3tokenizer import S3_TOKEN_RATE

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mtl, "load_safetensors", _redirected(mtl.load_safetensors, V2_FILE, V3_FILE))
        tts = mtl.ChatterboxMultilingualTTS.from_local(ckpt, "cpu")
    hp = tts.t3.hp  # 0.1.7 builds its alignment analyzer for multilingual configs only: HEAD never does
    hp.__class__ = type("HeadV3Config", (type(hp),), {"is_multilingual": property(lambda self: False)})
    render, samples_per_token = tts.s3gen.inference, S3GEN_SR // S3_TOKEN_RATE

    def inference(**kwargs):
        wav, sources = render(**kwargs)
        return wav[..., : max(1, int(kwargs["speech_tokens"].shape[-1]) - 1) * samples_per_token], sources

    tts.s3gen.inference = inference
    return tts


def emulate_nano(ckpt: Path):
    """HEAD's ChatterboxTurboTTS.from_local(ckpt, "cpu", nano=True)."""
    import chatterbox.tts_turbo as turbo
    from chatterbox.models.t3 import llama_configs

    small = dict(llama_configs.LLAMA_CONFIGS["GPT2_medium"], n_embd=768, hidden_size=768, n_head=12, n_layer=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(llama_configs.LLAMA_CONFIGS, "GPT2_medium", small)
        mp.setattr(turbo, "load_file", _redirected(turbo.load_file, "t3_turbo_v1.safetensors", "t3_nano_v1.safetensors"))
        return turbo.ChatterboxTurboTTS.from_local(ckpt, "cpu")
