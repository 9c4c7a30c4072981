"""The English text tokenizer: Chatterbox's `tokenizer.json` read with Hugging Face `tokenizers`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .normalize import punc_norm

log = logging.getLogger(__name__)

START = "[START]"
STOP = "[STOP]"
UNK = "[UNK]"
SPACE = "[SPACE]"


class EnglishTokenizer:
    """Text -> ids with spaces spelled as the [SPACE] token, as the English T3 was trained."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{self.path}: not a valid tokenizer.json ({exc})") from exc
        vocab = self.tokenizer.get_vocab()
        missing = [tok for tok in (START, STOP, SPACE) if tok not in vocab]
        if missing:
            raise ValueError(f"{self.path}: tokenizer lacks the special tokens {missing}")
        self.vocab_size = self.tokenizer.get_vocab_size()
        self._unk_id = vocab.get(UNK)
        self._known: dict[str, bool] = {}  # character -> has a token of its own (filled as characters are seen)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text.replace(" ", SPACE)).ids

    def text_ids(self, text: str) -> list[int]:
        """A chunk's ids as the model reads it: upstream's punctuation clean-up (`punc_norm`), then `encode`."""
        return self.encode(punc_norm(text))

    def text_to_tokens(self, text: str) -> torch.Tensor:
        """(1, L) int32 ids, as upstream's `EnTokenizer.text_to_tokens`."""
        return torch.tensor(self.encode(text), dtype=torch.int32).unsqueeze(0)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = self.tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "")
        return text.replace(SPACE, " ").replace(STOP, "").replace(UNK, "")

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` that encode to [UNK], in order of first appearance.

        BPE splits text into characters before merging, and only characters in the vocabulary merge, so a
        character unknown on its own is unknown anywhere. Whitespace is not unknown: it encodes to nothing
        (the pre-tokenizer splits on it) or to [SPACE].
        """
        return [ch for ch in dict.fromkeys(text) if not self._knows(ch)]

    def _knows(self, ch: str) -> bool:
        known = self._known.get(ch)
        if known is None:
            ids = self.tokenizer.encode(ch, add_special_tokens=False).ids
            # a tokenizer without an [UNK] token drops unknown characters: they encode to nothing
            known = self._known[ch] = ch.isspace() or (bool(ids) and self._unk_id not in ids)
        return known


def check_speakable(tokenizer: EnglishTokenizer, text: str, limit: int = 8) -> str:
    """`text` without the symbols the English model has no token for; ValueError if it has letters it has none for.

    text: what is split into chunks, after English normalisation where the preset does it (its spoken words
    for "€", "°"...). Characters are judged as the tokenizer gets them, after punc_norm, so the curly quotes,
    dashes and ellipses it maps onto ASCII count as known. Letters the model has no token for (another script:
    Chinese, Japanese, Arabic...) are words it would skip, speaking [UNK] tokens instead: an error naming them.
    Other unknown characters (emoji, symbols such as '©' or '→') carry no words: they are dropped, as a reader
    skips them, with one warning. `limit`: how many characters a message names.
    """
    present = set(text)  # punc_norm capitalises each chunk's first letter; judge only the caller's characters
    unknown = [ch for ch in tokenizer.unknown_characters(punc_norm(text)) if ch in present]
    letters = [ch for ch in unknown if ch.isalpha()]
    if letters:
        raise ValueError(f"text contains characters the English model cannot speak: {_describe(text, letters, limit)}; "
                         "Chatterbox's multilingual model speaks 23 languages")
    if unknown:
        log.warning("dropping characters the English model cannot speak: %s", _describe(text, unknown, limit))
        text = text.translate(dict.fromkeys(map(ord, unknown)))
    if not any(ch.isalnum() for ch in text):
        raise ValueError("text has nothing the English model can speak: no letter or digit it knows")
    return text


def _describe(text: str, chars: list[str], limit: int) -> str:
    """"'你' (U+4F60) at position 0, ..." for the first `limit` characters, then how many there are in all."""
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X}) at position {text.index(ch)}" for ch in chars[:limit])
    return shown + (f", ... ({len(chars)} distinct characters in all)" if len(chars) > limit else "")
