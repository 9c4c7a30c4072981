"""Long text -> chunks the model can speak well: sentence splitting and greedy packing.

Sentences come from sentencex (Wikimedia's rule-based splitter: no dependencies, handles
abbreviations, decimals, quotes and ellipses like pysbd on our cases, and splits a 1 MB text in
well under a second where pysbd takes ~15 s). Paragraphs are blank-line separated; the lines
inside a paragraph are joined (hard-wrapped prose), so a heading needs a blank line after it.

Input rules (`check_text`): tab, newline, carriage return, form feed and vertical tab are
whitespace; any other C0/C1 control character is rejected with its position. Text with no letter
or digit is rejected. A paragraph with no letter or digit (a "***" scene break) is not spoken but
still ends a chunk with a paragraph pause.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from sentencex import segment

BreakKind = Literal["word", "clause", "sentence", "paragraph", "end"]

MIN_CHARS, MAX_CHARS = 20, 1000
FILL_MIN_CHARS = 40  # pack_chunks(rows=...): shorter sentences still join their neighbours up to this length
# Pause after a chunk by what ends it; 0 means an equal-power crossfade (see audio.joins).
DEFAULT_PAUSES_S: Mapping[str, float] = {"word": 0.0, "clause": 0.1, "sentence": 0.3, "paragraph": 0.8}

# control characters other than tab, newline, vertical tab, form feed and carriage return (U+0009-U+000D)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v\r]*\n")
_UNSPACED = ("ja", "zh")  # languages written without spaces between sentences
_CLAUSE_BREAK = re.compile(r"(?<=[;:,\u2014\u2013])\s+|\s+(?=[\u2014\u2013-]\s)")


@dataclass(frozen=True)
class Chunk:
    """A piece of text to synthesise in one go, and what separates it from the next one."""

    text: str
    kind: BreakKind  # the boundary after this chunk: word/clause (inside a sentence), sentence, paragraph, end


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def check_text(text: str) -> None:
    """Raise ValueError for non-str text, control characters (with their position) or nothing to speak."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    control = _CONTROL.search(text)
    if control:
        raise ValueError(
            f"text contains control character U+{ord(control[0]):04X} at position {control.start()}; "
            "only tab, newline, carriage return, form feed and vertical tab are allowed"
        )
    if not _speakable(text):
        raise ValueError("text has nothing to speak: it is empty or only whitespace and punctuation")


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Sentences of one paragraph (whitespace collapsed) by `language`'s rules (a sentencex language code);
    pieces with no letter or digit join the previous one."""
    sentences: list[str] = []
    for piece in segment(language, " ".join(text.split())):
        piece = piece.strip()
        if not piece:
            continue
        if sentences and not _speakable(piece):
            sentences[-1] += piece if piece[0] in "\"')]}\u201d\u2019" else " " + piece
        else:
            sentences.append(piece)
    return sentences


def _greedy(pieces: list[str], max_chars: int, sep: str = " ") -> Iterator[str]:
    """Join consecutive pieces with `sep` into runs of at most max_chars (a longer piece stays alone)."""
    run = ""
    for piece in pieces:
        if run and len(run) + len(sep) + len(piece) > max_chars:
            yield run
            run = ""
        run = f"{run}{sep}{piece}" if run else piece
    if run:
        yield run


def _split_words(text: str, max_chars: int) -> list[str]:
    """Word-boundary split; a single word longer than max_chars is the only thing ever cut."""
    words = [w[i : i + max_chars] for w in text.split() for i in range(0, len(w), max_chars)]
    return list(_greedy(words, max_chars))


def _sentence_units(sentence: str, max_chars: int) -> list[tuple[str, BreakKind]]:
    """A sentence as units of at most max_chars: whole, else at clause breaks, else at word breaks."""
    if len(sentence) <= max_chars:
        return [(sentence, "sentence")]
    units: list[tuple[str, BreakKind]] = []
    for clause_run in _greedy(_CLAUSE_BREAK.split(sentence), max_chars):
        words = _split_words(clause_run, max_chars) if len(clause_run) > max_chars else [clause_run]
        units += [(w, "word") for w in words[:-1]] + [(words[-1], "clause")]
    units[-1] = (units[-1][0], "sentence")
    return units


def pack_chunks(text: str, max_chars: int = 300, language: str = "en", rows: int | None = None) -> list[Chunk]:
    """Pack sentences greedily into chunks of at most max_chars; paragraph breaks always end a chunk.

    Over-long sentences are split at clause punctuation (; : , dashes), then at spaces. The last
    chunk's kind is "end". language: the sentencex code of the text's language (Chinese and Japanese
    sentences are joined without a space). rows: spread the text over about this many chunks (a batch's
    rows decode side by side, so a text's T3 time is its longest chunk's): sentences are packed up to
    len(text) / rows characters (at least FILL_MIN_CHARS) and are still only split beyond max_chars.
    Raises ValueError for bad text (see `check_text`) or max_chars outside [MIN_CHARS, MAX_CHARS].
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or not MIN_CHARS <= max_chars <= MAX_CHARS:
        raise ValueError(f"max_chars must be an int in [{MIN_CHARS}, {MAX_CHARS}], got {max_chars!r}")
    check_text(text)
    target = max_chars if rows is None else min(max_chars, max(FILL_MIN_CHARS, -(-len(text) // rows)))
    chunks: list[Chunk] = []
    for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        if not _speakable(paragraph):
            if chunks:
                chunks[-1] = Chunk(chunks[-1].text, "paragraph")
            continue
        run, run_kind, sep = "", "sentence", "" if language in _UNSPACED else " "
        for sentence in split_sentences(paragraph, language):
            for unit, kind in _sentence_units(sentence, max_chars):
                if run and len(run) + len(sep) + len(unit) > target:
                    chunks.append(Chunk(run, run_kind))
                    run = ""
                run, run_kind = (f"{run}{sep}{unit}" if run else unit), kind
        chunks.append(Chunk(run, "paragraph"))
    chunks[-1] = Chunk(chunks[-1].text, "end")
    return chunks


def chunk_pauses(chunks: list[Chunk], pauses_s: Mapping[str, float] = DEFAULT_PAUSES_S) -> list[float]:
    """Seconds of pause between consecutive chunks (len(chunks) - 1 values), for audio.joins.join_chunks."""
    return [float(pauses_s[chunk.kind]) for chunk in chunks[:-1]]
