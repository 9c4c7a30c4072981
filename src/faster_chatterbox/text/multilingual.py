"""Chatterbox Multilingual's text tokenizer: `grapheme_mtl_merged_expanded_v1.json` read with `tokenizers`.

A chunk becomes ids as upstream's `MTLTokenizer` makes them:

    punc_norm (CJK sentence endings count) -> lower case -> NFKD -> the language's front-end (frontends.py)
    -> "[xx]" language tag in front -> spaces as [SPACE] -> BPE ids

The 23 languages and their names are upstream's `SUPPORTED_LANGUAGES`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


from .frontends import CangjieConverter, hebrew_diacritics, japanese_kana, korean_jamo, russian_stress
from .normalize import punc_norm
from .tokenizer import SPACE, EnglishTokenizer

TOKENIZER_FILE = "grapheme_mtl_merged_expanded_v1.json"
CANGJIE_FILE = "Cangjie5_TC.json"

SUPPORTED_LANGUAGES = {
    "ar": "Arabic", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "ms": "Malay", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese",
    "ru": "Russian", "sv": "Swedish", "sw": "Swahili", "tr": "Turkish", "zh": "Chinese",
}
# upstream's multilingual punc_norm also accepts these as a chunk's final punctuation
MTL_SENTENCE_ENDINGS = (".", "!", "?", "-", ",", "\u3001", "\uff0c", "\u3002", "\uff1f", "\uff01")
# sentencex's language codes where they differ from upstream's ("no" is Norwegian Bokmal there)
_SENTENCEX = {"no": "nb"}


def check_language(language_id) -> str:
    """`language_id` lower-cased when it is one of SUPPORTED_LANGUAGES, else a ValueError listing them."""
    if not isinstance(language_id, str):
        raise TypeError(f"language_id must be a str such as 'fr', got {type(language_id).__name__}")
    language = language_id.lower()
    if language not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language_id {language_id!r}: supported languages are "
                         f"{', '.join(SUPPORTED_LANGUAGES)}")
    return language


def sentence_language(language: str) -> str:
    """The code sentencex splits `language`'s sentences by."""
    return _SENTENCEX.get(language, language)


class MultilingualTokenizer(EnglishTokenizer):
    """Text in one of the 23 languages -> ids. strict: a front-end whose package is missing is an error
    naming the extra (False: skipped with a warning, as upstream does)."""

    def __init__(self, path: str | Path, cangjie_path: str | Path | None = None, strict: bool = True):
        super().__init__(path)
        self.cangjie = CangjieConverter(cangjie_path or self.path.parent / CANGJIE_FILE)
        self.strict = strict

    def encode(self, text: str, language: str | None = None) -> list[int]:
        """ids of `text` as upstream's `MTLTokenizer.encode(text, language_id)` (no punc_norm: see
        `encode_chunk`); language None: no front-end and no tag, as upstream."""
        text = unicodedata.normalize("NFKD", text.lower())
        if language is not None:
            text = f"[{language}]" + self.frontend(text, language)
        return self.tokenizer.encode(text.replace(" ", SPACE)).ids

    def encode_chunk(self, text: str, language: str | None) -> list[int]:
        """A chunk's ids as upstream's generate() makes them: its punc_norm first."""
        return self.encode(punc_norm(text, endings=MTL_SENTENCE_ENDINGS), language)

    def frontend(self, text: str, language: str) -> str:
        """`text` (lower-cased, NFKD) through `language`'s front-end."""
        if language == "zh":
            return self.cangjie(text, self.strict)
        if language == "ja":
            return japanese_kana(text, self.strict)
        if language == "he":
            return hebrew_diacritics(text, self.strict)
        if language == "ko":
            return korean_jamo(text)
        if language == "ru":
            return russian_stress(text, self.strict)
        return text

