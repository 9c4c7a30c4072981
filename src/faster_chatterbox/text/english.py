"""English text normalisation for speech: numbers, money, dates, times, units, abbreviations.

Every rule rewrites what it recognises into words and leaves everything else as it was; nothing
is dropped. Number words come from num2words (US style: no "and" inside numbers, no commas).

Supported forms (`normalize_english` docstring has examples):
- numbers: 7, -3, 1,234,567, 3.14, .5, 007 (leading zeros and > 15 digits read digit by digit);
  digits glued to letters are spaced ("MP3" -> "MP three").
- money: $ £ € with cents/pence and scale words ("$3.50", "£2.5 million", "€1bn").
- ordinals (1st, 22nd), percentages (50%, 3.5 %), decades (1990s, '90s).
- dates: "March 3, 2024", "Mar. 3rd", "3 March 2024", "March 2024", ISO "2024-03-14" and numeric
  "3/14/2025". A numeric date is read month/day/year unless its first field is > 12 (then
  day/month) or `day_first=True`; impossible dates are left to the number rules.
- years: 4-digit numbers 1100-2099 read as years in dates, decades, year ranges ("1990-1995"),
  before AD/BC/CE/BCE and after "in", "since", "by", "from", "until", "during", ... Elsewhere a
  4-digit number is a cardinal ("2000 people" -> "two thousand people").
- times: 10:30, 7:05 pm, 7 p.m., 14:00, 10:30:15 (hours 0-23, minutes and seconds 00-59; "p.m." -> "PM").
- units after a number: km, m, cm, mm, kg, g, mg, lb, oz, mi, ft, mph, km/h, °C, °F, °, ml, L,
  ms, sec, min, h, hr, kWh, kW, GB, MB, KB, TB, GHz, MHz, kHz, Hz, V (singular for exactly 1).
- phone-like groups "555-1234", "555-123-4567" are read digit by digit; version numbers
  "2.0.1" as "two point zero point one".
- ranges: "3-5", "1.5-2" and "10 – 20" read "three to five" etc. (a hyphen only between bare numbers).
- abbreviations: Mr. Mrs. Ms. Dr. St. Prof. Jr. Sr. Capt. Lt. Sgt. Mt. Ave. etc. e.g. i.e. vs.
  approx. Inc. Ltd. No. #; "Dr."/"St." before a capitalised word read Doctor/Saint unless they
  follow a capitalised name mid-sentence ("on Baker St."), then Drive/Street. Abbreviations that can end a sentence keep a full stop when the sentence ends.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from num2words import num2words

from faster_chatterbox.text.chunking import check_text

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])\.\d+"  # 1,234.5 | 42 | .5
_SIGN = r"(?:(?<![\w.])[-\u2212+])?"  # a sign only where it cannot be a hyphen or range dash
_DIGITS = "zero one two three four five six seven eight nine".split()

_MONTHS = "January February March April May June July August September October November December".split()
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"Sept": "September"}
_MONTH_RE = "|".join(_MONTHS + sorted(_MONTH_ABBR, key=len, reverse=True))

_YEAR = r"1[1-9]\d\d|20\d\d"
_YEAR_CUE = (
    r"in|since|by|from|until|till|to|before|after|during|circa|around|year|of|early|late|mid|"
    r"spring|summer|autumn|fall|winter"
)

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents")}
_SCALES = {"thousand": "thousand", "k": "thousand", "million": "million", "m": "million", "mn": "million",
           "billion": "billion", "bn": "billion", "b": "billion", "trillion": "trillion", "tn": "trillion"}

_UNITS = {  # symbol: (singular, plural)
    "km/h": ("kilometer per hour", "kilometers per hour"), "kph": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"), "kWh": ("kilowatt hour", "kilowatt hours"),
    "km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"), "kg": ("kilogram", "kilograms"), "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"), "lbs": ("pound", "pounds"), "lb": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "mi": ("mile", "miles"), "ft": ("foot", "feet"), "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"), "L": ("liter", "liters"), "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"), "min": ("minute", "minutes"), "hrs": ("hour", "hours"), "hr": ("hour", "hours"),
    "h": ("hour", "hours"), "kW": ("kilowatt", "kilowatts"), "GB": ("gigabyte", "gigabytes"),
    "MB": ("megabyte", "megabytes"), "KB": ("kilobyte", "kilobytes"), "TB": ("terabyte", "terabytes"),
    "GHz": ("gigahertz", "gigahertz"), "MHz": ("megahertz", "megahertz"), "kHz": ("kilohertz", "kilohertz"),
    "Hz": ("hertz", "hertz"), "V": ("volt", "volts"),
    "°C": ("degree Celsius", "degrees Celsius"), "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))

# Abbreviation -> words; the second field says whether it may end a sentence (then a "." is kept there).
_ABBREVIATIONS = {
    "Mr.": ("Mister", False), "Mrs.": ("Missus", False), "Ms.": ("Miz", False), "Prof.": ("Professor", False),
    "Capt.": ("Captain", False), "Lt.": ("Lieutenant", False), "Sgt.": ("Sergeant", False),
    "Mt.": ("Mount", False), "vs.": ("versus", False), "e.g.": ("for example", False),
    "i.e.": ("that is", False), "approx.": ("approximately", False), "Jr.": ("Junior", True),
    "Sr.": ("Senior", True), "Ave.": ("Avenue", True), "etc.": ("et cetera", True),
    "Inc.": ("Incorporated", True), "Ltd.": ("Limited", True),
}
_TITLE_OR_PLACE = {"Dr.": ("Doctor", "Drive"), "St.": ("Saint", "Street")}


def _int_words(digits: str) -> str:
    """Words for a digit string; leading zeros or more than 15 digits are read digit by digit."""
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 15:
        return " ".join(_DIGITS[int(d)] for d in digits)
    return num2words(int(digits)).replace(",", "").replace(" and ", " ")


def _number_words(text: str) -> str:
    """Words for a signed decimal number with optional thousands separators ("-1,234.50")."""
    sign = ""
    if text[:1] in "-\u2212+":
        sign, text = ("plus " if text[0] == "+" else "minus "), text[1:]
    whole, _, frac = text.replace(",", "").partition(".")
    words = _int_words(whole) if whole else ""
    if frac:
        words = f"{words} point {' '.join(_DIGITS[int(d)] for d in frac)}".strip()
    return sign + words


def _year_words(year: str) -> str:
    return num2words(int(year), to="year").replace(",", "")


def _ordinal_words(n: int) -> str:
    return num2words(n, to="ordinal").replace(",", "").replace(" and ", " ")


_NEXT_SENTENCE = re.compile(r"\s*\Z|\s+[\"'\u201c(]?[A-Z]")
_NEXT_CAPITAL = re.compile(r"\s+[A-Z]")
_AFTER_NAME = re.compile(r"[^.!?\s]\s+[A-Z][a-z]+\s$")  # "... on Baker " before "St."


def _ends_sentence(m: re.Match[str]) -> bool:
    """Whether the text after a match starts a new sentence (end of text, or a capital after a space)."""
    return bool(_NEXT_SENTENCE.match(m.string, m.end()))  # match at a position: no copy of the rest


def _plural(word_phrase: str) -> str:
    head, _, last = word_phrase.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}".strip()


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["cur"]]
    amount, scale = m["amount"], m["scale"]
    sign = "minus " if m["sign"] else ""
    if scale:
        return f"{sign}{_number_words(amount)} {_SCALES[scale.lower()]} {many}"
    whole, _, frac = amount.replace(",", "").partition(".")
    if frac and len(frac) != 2:  # "$3.5" is not a cents amount
        return f"{sign}{_number_words(amount)} {many}"
    units, cents = int(whole or "0"), int(frac or "0")
    parts = [f"{_int_words(whole)} {one if units == 1 else many}"] if units or not cents else []
    if cents:
        parts.append(f"{_int_words(str(cents))} {sub_one if cents == 1 else sub_many}")
    return sign + " and ".join(parts)


def _unit(m: re.Match[str]) -> str:
    number = m["num"]
    one, many = _UNITS[m["unit"]]
    return f"{_number_words(number)} {one if number.lstrip('+') in ('1', '1.0') else many}"


def _time(m: re.Match[str]) -> str:
    hour, minute, second, half = int(m["h"]), m["m"], m.groupdict().get("s"), m["ampm"]
    words = _int_words(str(hour))
    if minute and minute != "00":
        words += f" oh {_DIGITS[int(minute[1])]}" if minute[0] == "0" else f" {_int_words(minute)}"
    elif minute and not half:
        words += " o'clock" if 1 <= hour <= 12 else " hundred"
    if second and second != "00":
        words += f" and {_int_words(second.lstrip('0'))} second{'' if second == '01' else 's'}"
    if half:
        words += " " + ("AM" if half[0].lower() == "a" else "PM")
        if half.endswith(".") and _ends_sentence(m):
            words += "."
    return words


def _date(month: int, day: int, year: str | None) -> str:
    words = f"{_MONTHS[month - 1]} {_ordinal_words(day)}"
    return f"{words}, {_year_words(year)}" if year else words


def _month_index(name: str) -> int:
    return _MONTHS.index(_MONTH_ABBR.get(name, name)) + 1


def _numeric_date(day_first: bool) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        a, b, year = int(m["a"]), int(m["b"]), m["y"]
        month, day = (b, a) if day_first or a > 12 else (a, b)
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return m[0]
        return _date(month, day, year if len(year) == 4 else None) + ("" if len(year) == 4 else f", {_int_words(year)}")

    return replace


def _abbreviation(m: re.Match[str]) -> str:
    token = m[0]
    if token in _TITLE_OR_PLACE:
        title, place = _TITLE_OR_PLACE[token]
        after_name = _AFTER_NAME.search(m.string, max(0, m.start() - 64), m.start())
        if not after_name and _NEXT_CAPITAL.match(m.string, m.end()):
            return title
        return place + ("." if _ends_sentence(m) else "")
    words, can_end = _ABBREVIATIONS[token]
    return words + ("." if can_end and _ends_sentence(m) else "")


def _decade(m: re.Match[str]) -> str:
    century, decade = m["c"], m["d"]
    return _plural(_year_words(century + decade) if century else _int_words(decade))


def _digit_groups(m: re.Match[str]) -> str:
    """Phone-like digit groups ("555-1234"), read digit by digit with a pause between groups."""
    return ", ".join(" ".join(_DIGITS[int(d)] for d in group) for group in re.split(r"[-.]", m[0]))


def _spaced_number(m: re.Match[str]) -> str:
    text, start, end = m.string, m.start(), m.end()
    words = _number_words(m[0])
    if start > 0 and text[start - 1].isalpha():
        words = " " + words
    if end < len(text) and text[end].isalpha():
        words += " "
    return words


_ABBR_RE = "|".join(re.escape(a) for a in sorted([*_ABBREVIATIONS, *_TITLE_OR_PLACE], key=len, reverse=True))


def _rules(day_first: bool) -> list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]:
    """The rewrite rules in the order they apply (specific forms before general numbers)."""
    month = rf"(?P<mon>{_MONTH_RE})\.?"
    return [
        (re.compile(rf"(?<![\w.])(?:{_ABBR_RE})(?![\w])"), _abbreviation),
        (re.compile(r"(?<![\w.])(?:No|no|#)\.?\s?(?=\d)"), "number "),
        (re.compile(r"\s?&\s?"), " and "),
        (re.compile(r"\b(?P<y>\d{4})-(?P<mo>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12]\d|3[01])\b"),
         lambda m: _date(int(m["mo"]), int(m["d"]), m["y"])),
        (re.compile(r"\b(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4}|\d{2})\b"), _numeric_date(day_first)),
        (re.compile(rf"\b{month}\s+(?P<d>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\b(?:,?\s+(?P<y>{_YEAR})\b)?"),
         lambda m: _date(_month_index(m["mon"]), int(m["d"]), m["y"])),
        (re.compile(rf"\b(?P<d>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\s+(?:of\s+)?{month}(?:,?\s+(?P<y>{_YEAR})\b)?"),
         lambda m: f"the {_ordinal_words(int(m['d']))} of {_MONTHS[_month_index(m['mon']) - 1]}"
         + (f", {_year_words(m['y'])}" if m["y"] else "")),
        (re.compile(rf"\b{month}\s+(?P<y>{_YEAR})\b"), lambda m: f"{_MONTHS[_month_index(m['mon']) - 1]} {_year_words(m['y'])}"),
        (re.compile(r"\b(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d))?(?!:?\d)"
                    r"(?:\s?(?P<ampm>[aApP]\.[mM]\.|[aApP][mM]\b))?"), _time),
        (re.compile(r"\b(?P<h>1[0-2]|0?[1-9])(?P<m>)\s?(?P<ampm>[aApP]\.[mM]\.|[aApP][mM]\b)"), _time),
        (re.compile(rf"(?P<sign>(?<![\w.])[-\u2212])?(?P<cur>[$£€])\s?(?P<amount>{_NUM})"
                    rf"(?:\s?(?P<scale>thousand|million|billion|trillion|k|m|mn|bn|b|tn)\b)?", re.I), _money),
        (re.compile(rf"(?P<num>{_SIGN}(?:{_NUM}))\s?(?:%|percent\b)"), lambda m: f"{_number_words(m['num'])} percent"),
        (re.compile(rf"(?P<num>{_SIGN}(?:{_NUM}))\s?(?P<unit>{_UNIT_RE})(?![\w])"), _unit),
        (re.compile(r"\b(?P<n>\d{1,3}(?:,\d{3})+|\d+)(?:st|nd|rd|th)\b", re.I),
         lambda m: _ordinal_words(int(m["n"].replace(",", "")))),
        (re.compile(r"(?:\b(?P<c>1[1-9]|20)|(?<![\w'])'?)(?P<d>\d0)'?s\b"), _decade),
        (re.compile(rf"\b(?P<a>{_YEAR})\s?[-\u2013]\s?(?P<b>{_YEAR})\b"),
         lambda m: f"{_year_words(m['a'])} to {_year_words(m['b'])}"),
        (re.compile(r"\b(?P<y>\d{1,4})(?=\s?(?:AD|BC|BCE|CE)\b)"), lambda m: _year_words(m["y"])),
        (re.compile(rf"\b(?P<cue>{_YEAR_CUE})\s(?P<y>{_YEAR})\b(?![.,]?\d)", re.I),
         lambda m: f"{m['cue']} {_year_words(m['y'])}"),
        (re.compile(r"\b(?:\d{3}-){1,2}\d{4}\b"), _digit_groups),
        (re.compile(r"\b\d+(?:\.\d+){2,}\b"), lambda m: " point ".join(_int_words(p) for p in m[0].split("."))),
        (re.compile(rf"(?<!\d-)(?P<a>{_SIGN}(?:{_NUM}))(?:\s?\u2013\s?|(?<=\d)-(?=\d))(?P<b>{_NUM})(?![\w.-]\d)"),
         lambda m: f"{_number_words(m['a'])} to {_number_words(m['b'])}"),
        (re.compile(rf"{_SIGN}(?:{_NUM})"), _spaced_number),
    ]


_RULES = {flag: _rules(flag) for flag in (False, True)}

# Chatterbox-Flash's training text (its reference's `en_us_cleaner`) also had these forms, applied first:
# compatibility characters folded (NFKC), dashes as pauses, hyphenated words split, comparison signs between
# numbers read, and a few acronyms spelled out.
_FLASH_RULES = [
    (re.compile("[\u2013\u2014]"), "-"),
    (re.compile(r"(?<=\d\s)>(?=\s\d)"), "is greater than"),
    (re.compile(r"(?<=\d\s)<(?=\s\d)"), "is less than"),
    (re.compile(r"(?<=\D)\s*-\s+(?=\D)|(?<=\D)\s+-\s*(?=\D)"), ", "),
    (re.compile(r"(?<=[a-z])-(?=[a-z])", re.IGNORECASE), " "),
    (re.compile(r"\b(ai|ceo|tts|cms|cdn)\b\.?", re.IGNORECASE), lambda m: " ".join(m[1].lower())),
]


def normalize_english(text: str, *, day_first: bool = False, flash: bool = False) -> str:
    """Rewrite numbers, money, dates, times, units and abbreviations as spoken English words.

    `day_first` reads ambiguous numeric dates (3/4/2025) as day/month/year. `flash`: first the forms of
    Chatterbox-Flash's training text (NFKC; "a - b", "late — very" -> "a, b", "late, very"; "well-known" ->
    "well known"; "5 > 3" -> "5 is greater than 3"; "AI", "CEO", "TTS" -> "a i", "c e o", "t t s").
    Raises ValueError for control characters (see `check_text`). Examples:
    "$3.50" -> "three dollars and fifty cents"; "March 3, 2024" -> "March third, twenty twenty-four";
    "at 7:05 pm" -> "at seven oh five PM"; "Dr. Smith ran 5 km" -> "Doctor Smith ran five kilometers".
    """
    check_text(text)
    rules = _RULES[day_first]
    if flash:
        text = unicodedata.normalize("NFKC", text)
        rules = _FLASH_RULES + rules
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text
