"""Chatterbox Multilingual: a drop-in for upstream's `chatterbox.mtl_tts.ChatterboxMultilingualTTS`.

    tts = ChatterboxMultilingualTTS.from_pretrained(device="cuda")            # t3_model="v3" for the newer T3
    wav = tts.generate("Bonjour tout le monde.", language_id="fr")           # (1, N) float32 at tts.sr
    for piece in tts.generate_stream(chapter, language_id="ja"): ...

The same engine as English ChatterboxTTS (this class is one): the same Llama T3 with a text vocabulary of
2454 (graphemes of 23 languages, Cangjie codes, a language tag per language), the same S3Gen and voice
encoder, read from pickled state dicts (ve.pt, s3gen.pt) instead of safetensors. What differs:
  - the language is per call (`language_id`, in the call's settings): the text front-end and "[xx]" tag of
    text/multilingual.py, sentence splitting by the language's rules, English normalisation for "en" only;
  - T3 v2 decodes as upstream 0.1.7 does: with its alignment guard (engine/alignment.py: no stop before the
    text's end, a forced stop on long tails and repeats) and a default repetition penalty of 2.0;
  - T3 v3 (and any other T3 file: a language pack's, a fine-tune) as upstream's HEAD (resemble-ai/chatterbox
    5de7a54) does: without the guard, a default repetition penalty of 1.2, and each chunk's last speech token
    not voiced (it decodes to ~40 ms of noise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import MTL_FILES, MTL_T3_FILES, REPO_ID, CheckpointError, check_checkpoint_dir, download_checkpoint
from .devices import resolve_device
from .pipeline import Piece, SynthesisResult
from .settings import DEFAULT_PRESET, CallSettings, EngineSettings, engine_settings
from .text.multilingual import SUPPORTED_LANGUAGES, TOKENIZER_FILE, MultilingualTokenizer, check_language
from .config import ChatterboxConfig
from .tts import ChatterboxTTS, _load_settings, load_modules, read_config

MTL_TEXT_VOCAB = 2454
# the default repetition penalty of upstream's generate for each T3: 0.1.7's (v2) and HEAD's (v3)
REPETITION_PENALTY = {"v2": 2.0, "v3": 1.2}

__all__ = ["ChatterboxMultilingualTTS", "SUPPORTED_LANGUAGES", "resolve_t3_model"]


def resolve_t3_model(t3_model: str | Path | None) -> str | Path:
    """The T3 file of `t3_model`: None or "v2" (the default), "v3", a file name of the checkpoint
    ("t3_mtl23ls_v3", "....safetensors"; a str), or an existing local .safetensors file (a Path)."""
    if t3_model is None:
        return MTL_T3_FILES["v2"]
    if not isinstance(t3_model, (str, Path)):
        raise TypeError(f"t3_model must be None, 'v2', 'v3' or a .safetensors file, got {type(t3_model).__name__}")
    name = str(t3_model)
    by_stem = {Path(f).stem: f for f in MTL_T3_FILES.values()}
    if name in MTL_T3_FILES or name in by_stem:
        return MTL_T3_FILES.get(name) or by_stem[name]
    if name.endswith(".safetensors"):
        return Path(name) if name not in MTL_T3_FILES.values() and Path(name).is_file() else name
    raise ValueError(f"unknown t3_model {name!r}: choose 'v2', 'v3', {', '.join(sorted(by_stem))} "
                     "or a .safetensors file")


class ChatterboxMultilingualTTS(ChatterboxTTS):
    """ChatterboxTTS for 23 languages; every synthesis call names its language (`language_id`)."""

    MODEL = "multilingual"
    LANGUAGES = tuple(SUPPORTED_LANGUAGES)

    @classmethod
    def get_supported_languages(cls) -> dict[str, str]:
        return dict(SUPPORTED_LANGUAGES)

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    def from_local(cls, ckpt_dir: str | Path, device: str = "auto", t3_model: str | Path | None = None,
                   preset: str = DEFAULT_PRESET, watermark: bool = True, *, alignment_guard: bool | None = None,
                   strict_text: bool = True, settings: EngineSettings | None = None) -> ChatterboxMultilingualTTS:
        """Load a Multilingual checkpoint directory (ve.pt, t3_mtl23ls_v2/_v3.safetensors, s3gen.pt,
        grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json, conds.pt).

        t3_model: see `resolve_t3_model`; the v2 file decodes as upstream 0.1.7's, any other T3 file (v3, a
        language pack's) as upstream HEAD's (see the module's docstring). alignment_guard: decode with upstream
        0.1.7's alignment guard (default: for v2 only, as upstream). strict_text: a language front-end whose
        package is missing is an error naming the extra (False: skipped with a warning, as upstream).
        settings: as ChatterboxTTS.from_local.
        """
        t3_file = resolve_t3_model(t3_model)
        # the v2 file decodes as upstream 0.1.7 does; any other (v3, a language pack's, a local fine-tune) as
        # upstream HEAD, the only upstream that loads them
        version = "v2" if Path(t3_file).name == MTL_T3_FILES["v2"] else "v3"
        if alignment_guard is None:
            alignment_guard = version == "v2"
        settings = _load_settings(preset, device, "cfm", settings, model=cls.MODEL, alignment_guard=bool(alignment_guard),
                                  drop_final_token=version == "v3")
        t3_path = Path(t3_file) if isinstance(t3_file, Path) else Path(ckpt_dir) / t3_file
        ckpt_dir = check_checkpoint_dir(ckpt_dir, ("ve.pt", "s3gen.pt", TOKENIZER_FILE),
                                        optional=("conds.pt", "Cangjie5_TC.json"))
        if not t3_path.is_file():
            raise CheckpointError(f"{t3_path} not found: the multilingual T3 ({', '.join(MTL_T3_FILES.values())})")
        official = ChatterboxConfig()  # the official sizes, with the multilingual vocabulary
        config = read_config(ckpt_dir, replace(official, t3=replace(official.t3, text_tokens_dict_size=MTL_TEXT_VOCAB)))
        files = {"ve.safetensors": "ve.pt", "t3_cfg.safetensors": str(t3_path.resolve()), "s3gen.safetensors": "s3gen.pt"}
        tokenizer = MultilingualTokenizer(ckpt_dir / TOKENIZER_FILE, strict=strict_text)
        ve, t3, s3gen = load_modules(ckpt_dir, config, files=files)
        tts = cls._assemble(ckpt_dir, ve, t3, s3gen, tokenizer, device, settings, watermark)
        tts.t3_file, tts.t3_version = t3_path, version
        return tts

    @classmethod
    def from_pretrained(cls, device: str = "auto", t3_model: str | None = None, preset: str = DEFAULT_PRESET,
                        watermark: bool = True, *, repo_id: str = REPO_ID, revision: str | None = None,
                        cache_dir: str | Path | None = None, **kwargs) -> ChatterboxMultilingualTTS:
        """Download (or find in the Hugging Face cache) the Multilingual files with `t3_model`'s T3 ("v2" by
        default, "v3", a file name of the repository, or a local .safetensors file: then only the other files
        are downloaded), then `from_local` (keyword arguments as there). repo_id: e.g. a language pack of
        checkpoint.MTL_LANGUAGE_PACKS."""
        engine_settings(preset, resolve_device(device))  # fail before a multi-GB download
        t3_file = resolve_t3_model(t3_model)
        files = MTL_FILES if isinstance(t3_file, Path) else (t3_file, *MTL_FILES)
        ckpt_dir = download_checkpoint(repo_id, revision=revision, cache_dir=cache_dir, files=files)
        return cls.from_local(ckpt_dir, device, t3_model=t3_file, preset=preset, watermark=watermark, **kwargs)

    # ---- synthesis ------------------------------------------------------------------------
    def generate(self, text: str, language_id: str, audio_prompt_path: str | Path | None = None,
                 exaggeration: float = 0.5, cfg_weight: float = 0.5, temperature: float = 0.8,
                 repetition_penalty: float | None = None, min_p: float = 0.05, top_p: float = 1.0,
                 **kwargs) -> torch.Tensor:
        """Speak `text` in `language_id` (a key of SUPPORTED_LANGUAGES); returns (1, N) float32 at `self.sr`.
        Upstream's arguments (repetition_penalty None: upstream's default for this T3, 2.0 for v2 and 1.2 for
        v3), plus ChatterboxTTS.generate's keyword extras (voice, seed, max_new_tokens,
        n_timesteps, watermark, fast_inference, optimize_quality)."""
        result = self.synthesize(text, language_id, audio_prompt_path=audio_prompt_path, exaggeration=exaggeration,
                                 cfg_weight=cfg_weight, temperature=temperature, repetition_penalty=repetition_penalty,
                                 min_p=min_p, top_p=top_p, **kwargs)
        return torch.from_numpy(result.audio).unsqueeze(0)

    def synthesize(self, text: str, language_id: str | None = None, *, settings: CallSettings | None = None,
                   **kwargs) -> SynthesisResult:
        """ChatterboxTTS.synthesize in `language_id` (required unless `settings` brings it)."""
        return super().synthesize(text, settings=settings, **self._language(language_id, settings, kwargs))

    def generate_stream(self, text: str, language_id: str | None = None, *, settings: CallSettings | None = None,
                        **kwargs) -> Iterator[Piece]:
        """ChatterboxTTS.generate_stream in `language_id` (required unless `settings` brings it)."""
        return super().generate_stream(text, settings=settings, **self._language(language_id, settings, kwargs))

    def text_tokens(self, text: str, language_id: str = "en") -> torch.Tensor:
        """T3's input for one chunk in `language_id`: (L,) ids wrapped in the start/stop text tokens."""
        return self.engine.text_tokens(text, check_language(language_id))

    def _language(self, language_id, settings: CallSettings | None, kwargs: dict) -> dict:
        """The call's keyword arguments with its language (and this T3's default repetition penalty)."""
        if settings is not None:
            if language_id is not None and check_language(language_id) != settings.language:
                raise ValueError(f"language_id {language_id!r} differs from the settings' {settings.language!r}")
            return kwargs
        if language_id is None:
            raise TypeError("language_id is required: one of " + ", ".join(SUPPORTED_LANGUAGES))
        if kwargs.get("repetition_penalty") is None:
            kwargs = {**kwargs, "repetition_penalty": REPETITION_PENALTY[self.t3_version]}
        return {**kwargs, "language": check_language(language_id)}
