"""Per-language text front-ends of Chatterbox Multilingual, as upstream's tokenizer applies them.

    zh  Cangjie codes: each Chinese character becomes its Cangjie5 code spelled as [cj_x] tokens, then [cj_.]
        (Cangjie5_TC.json of the checkpoint), after word segmentation (spacy-pkuseg) that puts spaces
        between words
    ja  kanji -> hiragana (pykakasi), katakana kept, then NFKD
    ko  Hangul syllables -> conjoining jamo (the Unicode decomposition formula; no dependency)
    he  diacritics (niqqud) added by Dicta's model (dicta-onnx)
    ru  stress marks (russian-text-stresser)

Upstream skips a front-end whose package is missing, with a warning, and the model then reads text unlike
what it was trained on. Here a missing package is an error naming the extra to install (`MissingExtraError`),
unless the tokenizer is made with `strict=False`, which skips it as upstream does.
The helpers are loaded once, on first use, and shared (they hold no per-call state).
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# language -> (module to import, how to install it, what it does)
HELPERS = {
    "zh": ("spacy_pkuseg", "pip install 'faster-chatterbox[zh]'", "Chinese word segmentation"),
    "ja": ("pykakasi", "pip install 'faster-chatterbox[ja]'", "Japanese kanji to kana"),
    "he": ("dicta_onnx", "pip install 'faster-chatterbox[he]'", "Hebrew diacritics"),
    "ru": ("russian_text_stresser.text_stresser", "pip install russian-text-stresser (not on PyPI: from its "
           "repository)", "Russian stress marks"),
}


class MissingExtraError(ImportError):
    """A language's text front-end needs a package that is not installed."""


_helpers: dict[str, object] = {}
_warned: set[str] = set()  # languages whose missing helper was reported
_lock = threading.Lock()


def _helper(language: str, make: Callable[[object], object], strict: bool) -> object | None:
    """The language's helper object (made from its imported module once), or None when its package is missing
    and not strict."""
    with _lock:
        if language in _helpers:
            return _helpers[language]
        module_name, install, purpose = HELPERS[language]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if strict:
                raise MissingExtraError(
                    f"language {language!r} needs {module_name.split('.')[0]} for {purpose}: {install} (or "
                    "load with strict_text=False to skip it, as upstream does)") from exc
            if language not in _warned:
                _warned.add(language)
                log.warning("%s not installed: %s skipped (as upstream does)", module_name, purpose)
            return None
        helper = _helpers[language] = make(module)
        return helper


# ---- Japanese --------------------------------------------------------------------------------------------
def _is_kanji(ch: str) -> bool:
    return 0x4E00 <= ord(ch) <= 0x9FFF


def _is_katakana(ch: str) -> bool:
    return 0x30A1 <= ord(ch) <= 0x30FA


def japanese_kana(text: str, strict: bool = True) -> str:
    """Kanji phrases in hiragana (a particle は/へ that starts one gets a space before it), katakana and the
    rest as written, then NFKD (the tokenizer's vocabulary holds decomposed kana)."""
    kakasi = _helper("ja", lambda m: m.kakasi(), strict)
    if kakasi is None:
        return text
    out = []
    for part in kakasi.convert(text):
        orig, hira = part["orig"], part["hira"]
        if any(_is_kanji(ch) for ch in orig):
            out.append(" " + hira if hira[:1] in ("は", "へ") else hira)
        else:
            out.append(orig)  # katakana-only phrases keep their script, as does everything else
    return unicodedata.normalize("NFKD", "".join(out))


# ---- Korean ----------------------------------------------------------------------------------------------
_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7AF
_MEDIALS, _FINALS = 21, 28


def korean_jamo(text: str) -> str:
    """Each precomposed Hangul syllable as its leading consonant, vowel and (if any) trailing consonant
    (U+1100 / U+1161 / U+11A8 blocks); the result stripped of surrounding whitespace, as upstream."""
    out = []
    for ch in text:
        code = ord(ch)
        if not _HANGUL_FIRST <= code <= _HANGUL_LAST:
            out.append(ch)
            continue
        base = code - _HANGUL_FIRST
        out.append(chr(0x1100 + base // (_MEDIALS * _FINALS)))
        out.append(chr(0x1161 + (base % (_MEDIALS * _FINALS)) // _FINALS))
        if base % _FINALS:
            out.append(chr(0x11A7 + base % _FINALS))
    return "".join(out).strip()


# ---- Hebrew and Russian ----------------------------------------------------------------------------------
def hebrew_diacritics(text: str, strict: bool = True) -> str:
    dicta = _helper("he", lambda m: m.Dicta(), strict)
    return text if dicta is None else _guarded(dicta.add_diacritics, text, "Hebrew diacritization")


def russian_stress(text: str, strict: bool = True) -> str:
    stresser = _helper("ru", lambda m: m.RussianTextStresser(), strict)
    return text if stresser is None else _guarded(stresser.stress_text, text, "Russian stress labelling")


def _guarded(run: Callable[[str], str], text: str, what: str) -> str:
    """A model-based helper's output; its own failure leaves the text as it was, with a warning (as upstream)."""
    try:
        return run(text)
    except Exception as exc:  # the helpers' models raise anything
        log.warning("%s failed (%s): text left as it is", what, exc)
        return text


# ---- Chinese ---------------------------------------------------------------------------------------------
class CangjieConverter:
    """Chinese characters -> Cangjie5 code tokens, from the checkpoint's Cangjie5_TC.json (entries
    "character<TAB>code..."). A code shared by several characters gets the character's rank among them
    appended (rank 0: nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._codes: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._codes is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path} not found: Chinese text needs the checkpoint's Cangjie5_TC.json")
            try:
                entries = json.loads(self.path.read_text(encoding="utf-8"))
                pairs = [entry.split("\t")[:2] for entry in entries]
                word_code = {word: code for word, code in pairs}  # a repeated character: its last code
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{self.path}: not a Cangjie table (a JSON list of 'char<TAB>code' strings)") from exc
            ranks: dict[str, list[str]] = {}
            for word, code in pairs:
                ranks.setdefault(code, []).append(word)
            self._codes = {word: code + (str(rank) if (rank := ranks[code].index(word)) else "")
                           for word, code in word_code.items()}
        return self._codes

    def __call__(self, text: str, strict: bool = True) -> str:
        segmenter = _helper("zh", lambda m: m.pkuseg(), strict)
        if segmenter is not None:
            text = " ".join(segmenter.cut(text))
        codes, out = self._load(), []
        for ch in text:
            code = codes.get(ch) if unicodedata.category(ch) == "Lo" else None
            out.append(ch if code is None else "".join(f"[cj_{c}]" for c in code) + "[cj_.]")
        return "".join(out)
