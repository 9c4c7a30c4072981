"""Long-text front end: English normalisation, sentence splitting, chunk packing, input checks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faster_chatterbox.text.chunking import (
    FILL_MIN_CHARS,
    MAX_CHARS,
    Chunk,
    check_text,
    chunk_pauses,
    pack_chunks,
    split_sentences,
)
from faster_chatterbox.text.english import normalize_english

CASES = {
    "$3.50": "three dollars and fifty cents",
    "It costs $1.": "It costs one dollar.",
    "$0.99 each": "ninety-nine cents each",
    "£5 and €2.50": "five pounds and two euros and fifty cents",
    "$3.5 million": "three point five million dollars",
    "$1,000,000": "one million dollars",
    "I have 1,234,567 apples.": "I have one million two hundred thirty-four thousand five hundred sixty-seven apples.",
    "Pi is 3.14 and -2.5 is negative.": "Pi is three point one four and minus two point five is negative.",
    "Agent 007": "Agent zero zero seven",
    "the 1st and 22nd and 103rd": "the first and twenty-second and one hundred third",
    "March 3, 2024": "March third, twenty twenty-four",
    "on Mar. 3rd we left": "on March third we left",
    "3 March 2024": "the third of March, twenty twenty-four",
    "2024-03-14": "March fourteenth, twenty twenty-four",
    "3/14/2025": "March fourteenth, twenty twenty-five",
    "14/3/2025": "March fourteenth, twenty twenty-five",
    "at 10:30 today": "at ten thirty today",
    "at 10:05 pm.": "at ten oh five PM.",
    "Call at 7 p.m. Tomorrow is fine.": "Call at seven PM. Tomorrow is fine.",
    "at 10:00": "at ten o'clock",
    "in 1999 we": "in nineteen ninety-nine we",
    "2000 people": "two thousand people",
    "the 1990s and '80s": "the nineteen nineties and eighties",
    "1990-1995": "nineteen ninety to nineteen ninety-five",
    "pages 3\u20135": "pages three to five",
    "pages 3-5, 1.5-2 liters": "pages three to five, one point five to two liters",
    "code 3-5-7": "code three-five-seven",
    "It was 10:30:15 then 7:05:01 pm.": "It was ten thirty and fifteen seconds then seven oh five and one second PM.",
    "50% off": "fifty percent off",
    "-2% change": "minus two percent change",
    "1 km and 2.5 kg at 60 mph": "one kilometer and two point five kilograms at sixty miles per hour",
    "25°C": "twenty-five degrees Celsius",
    "3 ft": "three feet",
    "Dr. Smith lives on Mulholland Dr. He is nice.": "Doctor Smith lives on Mulholland Drive. He is nice.",
    "St. Louis is on Main St.": "Saint Louis is on Main Street.",
    "Mr. and Mrs. Jones": "Mister and Missus Jones",
    "apples, etc. Then we ate.": "apples, et cetera. Then we ate.",
    "e.g. this, i.e. that, 5 vs. 3": "for example this, that is that, five versus three",
    "No. 5 & #1": "number five and number one",
    "MP3 and COVID-19": "MP three and COVID-nineteen",
    "call 555-1234": "call five five five, one two three four",
    "Version 2.0.1": "Version two point zero point one",
    "No digits here, just words.": "No digits here, just words.",
}


@pytest.mark.parametrize("text", CASES)
def test_normalize_english(text):
    assert normalize_english(text) == CASES[text]


def test_normalize_day_first_and_never_drops_words():
    assert normalize_english("3/4/2025") == "March fourth, twenty twenty-five"
    assert normalize_english("3/4/2025", day_first=True) == "April third, twenty twenty-five"
    text = "Hello world, the quick brown fox (really) jumps; over \"the\" lazy dog!"
    assert normalize_english(text) == text
    assert not any(ch.isdigit() for ch in normalize_english("It was 10:30:15 on 12/31/99, 1 in 3."))


def test_split_sentences_tricky_cases():
    assert split_sentences("Dr. Smith paid $3.50. He left at 3 p.m. on Friday.") == [
        "Dr. Smith paid $3.50.", "He left at 3 p.m. on Friday."]
    assert split_sentences('He said, "Stop it." Then he left.') == ['He said, "Stop it."', "Then he left."]
    assert split_sentences("Wait... what? I don't know.") == ["Wait... what?", "I don't know."]
    assert split_sentences("Hard\nwrapped line. Next one") == ["Hard wrapped line.", "Next one"]


def test_pack_chunks_limits_words_and_kinds():
    sentence = "The quick brown fox jumps over the lazy dog. "
    text = sentence * 20 + "\n\n" + "A second paragraph here. And more."
    chunks = pack_chunks(text, max_chars=100)
    assert all(len(c.text) <= 100 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()  # nothing lost, no word split
    assert [c.kind for c in chunks].count("paragraph") == 1 and chunks[-1].kind == "end"
    assert chunks[-1] == Chunk("A second paragraph here. And more.", "end")
    assert all(c.kind == "sentence" for c in chunks[:-2])
    assert chunk_pauses(chunks) == [0.3] * (len(chunks) - 2) + [0.8]


def test_pack_chunks_splits_long_sentences_at_clauses_then_words():
    clauses = "; ".join(f"clause number {i} goes on for a while" for i in range(12)) + "."
    chunks = pack_chunks(clauses, max_chars=80)
    assert all(len(c.text) <= 80 for c in chunks)
    assert all(c.text.endswith(";") for c in chunks[:-1]) and [c.kind for c in chunks[:-1]] == ["clause"] * (len(chunks) - 1)
    words = " ".join(["word"] * 60)
    chunks = pack_chunks(words, max_chars=50)
    assert all(len(c.text) <= 50 for c in chunks) and chunks[0].kind == "word"
    assert " ".join(c.text for c in chunks) == words
    long_word = "x" * 130
    assert [c.text for c in pack_chunks(long_word, max_chars=50)] == ["x" * 50, "x" * 50, "x" * 30]


SENTENCES = ["Oh, hello there.", "I was just thinking about the trip we took last summer, up the coast and into the hills.",
             "Do you remember the little bakery by the harbour?", "They had the best bread I have ever eaten, and the "
             "owner told us stories about the storms of nineteen eighty seven until dark.", "Yes.", "No!"]


@given(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=14), st.integers(1, 32),
       st.integers(130, 300))
@settings(max_examples=60, deadline=None)
def test_pack_chunks_spread_over_rows_keeps_sentences_whole(sentences, rows, max_chars):
    """rows=: a text spread over about `rows` chunks of whole sentences (split only beyond max_chars), nothing lost."""
    text = " ".join(sentences)
    spread = pack_chunks(text, max_chars=max_chars, rows=rows)
    greedy = pack_chunks(text, max_chars=max_chars)
    assert " ".join(c.text for c in spread).split() == text.split()
    assert all(len(c.text) <= max_chars for c in spread)
    assert len(greedy) <= len(spread)  # never fewer chunks than the greedy packing
    target = max(FILL_MIN_CHARS, -(-len(text) // rows))
    for chunk in spread:  # a chunk beyond the target is one unit: a sentence, or a piece of one over max_chars
        assert len(chunk.text) <= target or len(split_sentences(chunk.text)) == 1
    if all(len(s) <= max_chars for s in sentences):  # no sentence needs a split: every chunk ends one
        assert all(c.kind in ("sentence", "end") for c in spread)
    assert pack_chunks(text, max_chars=max_chars, rows=None) == greedy


def test_scene_break_paragraph_is_a_pause_not_speech():
    chunks = pack_chunks("First part.\n\n* * *\n\nSecond part.")
    assert [(c.text, c.kind) for c in chunks] == [("First part.", "paragraph"), ("Second part.", "end")]


@pytest.mark.parametrize("bad, message", [
    ("", "nothing to speak"), ("   \n\t ", "nothing to speak"), ("... !?!", "nothing to speak"),
    ("bell\x07here", "U\\+0007 at position 4"), ("c1\x85x", "U\\+0085 at position 2"), (b"bytes", "must be a str"),
])
def test_bad_text_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        pack_chunks(bad)
    with pytest.raises(ValueError, match=message):
        normalize_english(bad)


def test_whitespace_controls_and_bounds():
    check_text("tab\there\r\nform\ffeed\vok")
    assert pack_chunks("line one\r\n\r\nline two.")[0].kind == "paragraph"
    for bad in (0, 19, MAX_CHARS + 1, 300.0, True):
        with pytest.raises(ValueError, match="max_chars"):
            pack_chunks("Hello.", max_chars=bad)


def test_one_megabyte_text_packs_quickly():
    text = ("This sentence has about sixty characters, give or take a few. " * 17 + "\n\n") * 1000
    chunks = pack_chunks(text[: 1 << 20])
    assert all(len(c.text) <= 300 for c in chunks) and len(chunks) > 3000
