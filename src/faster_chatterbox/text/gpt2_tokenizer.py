"""Chatterbox-Turbo's (and Nano's) text tokenizer: GPT-2's byte-level BPE plus 19 paralinguistic tags.

The checkpoint ships Hugging Face's slow-tokenizer files; they are read here with `tokenizers` alone:
  vocab.json         50,257 BPE ids (<|endoftext|> = 50256)
  merges.txt         the BPE merges
  added_tokens.json  the tags, each one id: [angry] = 50257 ... [laugh] = 50275 (50,276 ids in all)
Byte-level BPE encodes any text (no unknown characters); a tag written in the text ("[laugh]") is one id.
Turbo reads the ids as they are (no start/stop text tokens) after its own punctuation clean-up.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .normalize import TURBO_REPLACEMENTS, punc_norm

FILES = ("vocab.json", "merges.txt", "added_tokens.json")
END_OF_TEXT = "<|endoftext|>"
PARALINGUISTIC_TAGS = ("[angry]", "[fear]", "[surprised]", "[whispering]", "[advertisement]", "[dramatic]",
                       "[narration]", "[crying]", "[happy]", "[sarcastic]", "[clear throat]", "[sigh]", "[shush]",
                       "[cough]", "[groan]", "[sniff]", "[gasp]", "[chuckle]", "[laugh]")
FIRST_TAG_ID = 50257


class GPT2Tokenizer:
    """Text -> GPT-2 BPE ids, tags as single ids; the interface of text.tokenizer.EnglishTokenizer."""

    def __init__(self, directory: str | Path):
        self.path = directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise ValueError(f"{directory}: the GPT-2 tokenizer lacks {', '.join(missing)}")
        try:
            bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
            added = json.loads((directory / "added_tokens.json").read_text(encoding="utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{directory}: not a valid GPT-2 tokenizer ({exc})") from exc
        if not isinstance(added, dict) or not all(isinstance(i, int) for i in added.values()):
            raise ValueError(f"{directory / 'added_tokens.json'}: expected an object of token -> id")
        self.tokenizer = Tokenizer(bpe)
        self.tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.tokenizer.decoder = decoders.ByteLevel()
        if END_OF_TEXT in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
        for token, wanted in sorted(added.items(), key=lambda item: item[1]):
            self.tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
            got = self.tokenizer.token_to_id(token)
            if got != wanted:
                raise ValueError(f"{directory / 'added_tokens.json'}: {token!r} should have id {wanted}, the "
                                 f"vocabulary gives it {got} (added ids must follow the vocabulary's)")
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_ids(self, text: str) -> list[int]:
        """A chunk's ids as Turbo reads it: its punctuation clean-up, then `encode`."""
        return self.encode(punc_norm(text, TURBO_REPLACEMENTS))

    def text_to_tokens(self, text: str) -> torch.Tensor:
        """(1, L) ids of `text` as given."""
        return torch.tensor(self.encode(text), dtype=torch.long).unsqueeze(0)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def unknown_characters(self, text: str) -> list[str]:
        """None: byte-level BPE has a token for every byte."""
        return []
