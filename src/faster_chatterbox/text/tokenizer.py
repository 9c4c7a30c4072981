"""The English text tokenizer: Chatterbox's `tokenizer.json` read with Hugging Face `tokenizers`."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

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

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text.replace(" ", SPACE)).ids

    def text_to_tokens(self, text: str) -> torch.Tensor:
        """(1, L) int32 ids, as upstream's `EnTokenizer.text_to_tokens`."""
        return torch.tensor(self.encode(text), dtype=torch.int32).unsqueeze(0)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = self.tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "")
        return text.replace(SPACE, " ").replace(STOP, "").replace(UNK, "")
