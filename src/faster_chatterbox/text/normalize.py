"""Upstream Chatterbox's light text clean-up (`punc_norm`), applied before tokenization.

The English model was trained on text passed through exactly these rules, so the exact preset
keeps them as they are. Fuller normalisation (numbers, dates, units) is a separate, later step.
"""

from __future__ import annotations

# Rare or LLM-style punctuation mapped onto what the training data used, applied in this order.
_REPLACEMENTS = (
    ("...", ", "),
    ("\u2026", ", "),  # ellipsis
    (":", ","),
    (" - ", ", "),
    (";", ", "),
    ("\u2014", "-"),  # em dash
    ("\u2013", "-"),  # en dash
    (" ,", ","),
    ("\u201c", '"'),
    ("\u201d", '"'),
    ("\u2018", "'"),
    ("\u2019", "'"),
)
# Chatterbox-Turbo's own list (tts_turbo.py): the same without the "...", " - " and ";" rules.
TURBO_REPLACEMENTS = tuple(r for r in _REPLACEMENTS if r[0] not in ("...", " - ", ";"))
_SENTENCE_ENDINGS = (".", "!", "?", "-", ",")


def punc_norm(text: str, replacements: tuple[tuple[str, str], ...] = _REPLACEMENTS,
              endings: tuple[str, ...] = _SENTENCE_ENDINGS) -> str:
    """Capitalise the first letter, collapse whitespace, map rare punctuation, end with punctuation (one of
    `endings`, else a full stop is added; the multilingual model also counts CJK ones).

    replacements: the model's list, applied in order (default: the English model's; TURBO_REPLACEMENTS).
    Empty text is rejected by the caller; upstream silently substitutes a canned sentence.
    """
    if text[:1].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in replacements:
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not text.endswith(endings):
        text += "."
    return text
