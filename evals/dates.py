"""Temporal questions scored by the date they name, not by shared tokens.

LoCoMo's token F1 gives the answer "2023" about 0.22 on the temporal questions of a 2023 conversation: the
year is one token of most gold answers ("7 May 2023"), so any route that answers with some date of the right
year earns it. ``date_score`` asks instead whether the answer names the right date, at the precision the gold
answer states:

* the gold is read as a window of days: ``7 May 2023`` is that day; ``June 2023`` (also ``early June 2023``,
  ``first week of June 2023``, ``end of June 2023``) is the month; ``summer 2022`` is June to August (spring:
  March to May, fall or autumn: September to November, winter: December of the year before to February), stated
  to the month; ``2022`` (``In 2022``) the year; ``The week before 9 June 2023`` the 7 days before that day and
  the day itself (``two weeks`` / ``two weekends``: 14, ``three weeks``: 21; any other span, ``the Friday``, ``a
  few days``: 7), ``... after D`` the day and the 7 after, ``The week of D`` 7 days either side; ``November 5-6,
  2022`` both days. The day a relative gold counts from is the session's date in LoCoMo, so an answer that
  names the session in which it was said is counted right. A gold that names no date with a year (``4 years``,
  ``Seattle``, ``13 August``) is not a date question: ``date_score`` returns ``None`` and it is left out.
* the answer's first date mention counts (``On 2 May 2023``, ``May 2, 2023``, ``2023-05-02``, ``May 2023``,
  ``2023``): it scores 1 when it is at least as precise as the gold (a day answers a month question, a year
  alone does not) and lies inside the gold's window; else 0. Only the first mention, so listing many dates
  earns nothing.

So "2023" scores only on the gold answers that are the year 2023 alone (``eval breakdown`` reports it beside
the date of a random session, the chance level of a module that names one of its own sessions' dates).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_MONTH_OF = {m: n for n, m in enumerate(_MONTHS, start=1)} | {m[:3]: n for n, m in enumerate(_MONTHS, start=1)} | {"sept": 9}
_SKIP = {"th", "st", "nd", "rd", "of"}
"""Words allowed between a day number and its month: ``13th of October``."""
_RANGE = {"to", "and"}
_SPANS = (("three weeks", 21), ("two weeks", 14), ("two weekends", 14))
_SEASONS = {"spring": (3, 5), "summer": (6, 8), "fall": (9, 11), "autumn": (9, 11), "winter": (12, 2)}
"""Season -> its first and last month (winter starts in December of the year before)."""
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TOKEN = re.compile(r"[A-Za-z]+|\d+|-")
PRECISION = {"day": 2, "month": 1, "year": 0}


@dataclass(frozen=True)
class DateSpan:
    """A window of days [first, last] and how precisely it was stated: ``day``, ``month`` or ``year``."""

    first: date
    last: date
    precision: str
    start: int = 0
    """Where in the text the mention begins (the first mention of an answer is the one scored)."""
    end: int = 0
    """Where in the text the mention ends (a relative phrase before it reaches back from here)."""

    def within(self, other: DateSpan) -> bool:
        return other.first <= self.first and self.last <= other.last


def _month(word: str) -> int | None:
    """A month name, its 3-letter abbreviation, or a long name one typo away (``Januarty``); else None."""
    word = word.lower()
    if word in _MONTH_OF:
        return _MONTH_OF[word]
    if len(word) >= 6:
        for name in _MONTHS:
            if len(name) >= 6 and _one_edit(word, name):
                return _MONTH_OF[name]
    return None


def _one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one insertion, deletion or substitution."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _year(token: tuple[str, int, int] | None) -> int | None:
    if token and token[0].isdigit() and len(token[0]) == 4 and 1900 <= int(token[0]) <= 2100:
        return int(token[0])
    return None


def _day(token: tuple[str, int, int] | None) -> int | None:
    if token and token[0].isdigit() and len(token[0]) <= 2 and 1 <= int(token[0]) <= 31:
        return int(token[0])
    return None


def _days(year: int, month: int, first: int, last: int, start: int, end: int) -> DateSpan | None:
    try:
        return DateSpan(date(year, month, first), date(year, month, max(first, last)), "day", start, end)
    except ValueError:  # 31 June
        return None


def _month_span(year: int, month: int, start: int, end: int) -> DateSpan:
    following = date(year + month // 12, month % 12 + 1, 1)
    return DateSpan(date(year, month, 1), following - timedelta(days=1), "month", start, end)


def _at(tokens: list[tuple[str, int, int]], i: int) -> DateSpan | None:
    """The date mention that starts at token ``i``, if one does (the longest reading)."""
    tok = lambda j: tokens[j] if j < len(tokens) else None  # noqa: E731
    start = tokens[i][1]
    # day [-day | to day] [th|of] month year
    first = _day(tok(i))
    if first is not None:
        j, last = i + 1, first
        if tok(j) and tok(j)[0].lower() in _RANGE | {"-"} and _day(tok(j + 1)) is not None:
            last, j = _day(tok(j + 1)), j + 2
        while tok(j) and tok(j)[0].lower() in _SKIP:
            j += 1
        month = _month(tok(j)[0]) if tok(j) else None
        year = _year(tok(j + 1))
        if month and year:
            return _days(year, month, first, last, start, tok(j + 1)[2])
        return None
    month = _month(tokens[i][0])
    if month is None:
        year = _year(tok(i))
        return DateSpan(date(year, 1, 1), date(year, 12, 31), "year", start, tokens[i][2]) if year else None
    # month day [th] [-day | to day] [th] year  |  month year
    year = _year(tok(i + 1))
    if year:
        return _month_span(year, month, start, tok(i + 1)[2])
    first = _day(tok(i + 1))
    if first is None:
        return None
    j, last = i + 2, first
    while tok(j) and tok(j)[0].lower() in _SKIP - {"of"}:
        j += 1
    if tok(j) and tok(j)[0].lower() in _RANGE | {"-"} and _day(tok(j + 1)) is not None:
        last, j = _day(tok(j + 1)), j + 2
        while tok(j) and tok(j)[0].lower() in _SKIP - {"of"}:
            j += 1
    year = _year(tok(j))
    return _days(year, month, first, last, start, tok(j)[2]) if year else None


def mentions(text: str) -> list[DateSpan]:
    """Every date with a year that ``text`` names, in order of appearance."""
    found = []
    for m in _ISO.finditer(text):
        span = _days(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(3)), m.start(), m.end()) \
            if 1 <= int(m.group(2)) <= 12 else None
        if span:
            found.append(span)
    rest = _ISO.sub(lambda m: " " * len(m.group(0)), text)
    tokens = [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(rest)]
    i = 0
    while i < len(tokens):
        span = _at(tokens, i)
        if span is None:
            i += 1
            continue
        found.append(span)
        while i < len(tokens) and tokens[i][1] < span.end:
            i += 1
    return sorted(found, key=lambda s: s.start)


def gold_window(gold: str) -> DateSpan | None:
    """The window of days a gold answer names (see the module's docstring), or None when it names no date."""
    found = mentions(gold)
    if not found:
        return None
    anchor = found[0]
    before = gold[:anchor.start].lower()
    if anchor.precision == "year":
        season = next((months for name, months in _SEASONS.items() if re.search(rf"\b{name}\b", before)), None)
        if season:
            first, last = season
            year = anchor.first.year
            return DateSpan(date(year - (first > last), first, 1), _month_span(year, last, 0, 0).last, "month")
    if anchor.precision != "day":
        return anchor
    days = next((n for phrase, n in _SPANS if phrase in before), 7)
    if re.search(r"\bbefore\b", before):
        return DateSpan(anchor.first - timedelta(days=days), anchor.last, "day")
    if re.search(r"\bafter\b", before):
        return DateSpan(anchor.first, anchor.last + timedelta(days=days), "day")
    if re.search(r"\bweek of\b", before):
        return DateSpan(anchor.first - timedelta(days=7), anchor.last + timedelta(days=7), "day")
    return anchor


def date_score(prediction: str, gold: str) -> float | None:
    """1 when the prediction's first date lies in the gold's window at the gold's precision, 0 if not, None when the
    gold names no date (not a date question)."""
    window = gold_window(gold)
    if window is None:
        return None
    said = mentions(prediction)
    if not said:
        return 0.0
    first = said[0]
    return float(PRECISION[first.precision] >= PRECISION[window.precision] and first.within(window))


def said_score(prediction: str, days: Collection[date]) -> float:
    """1 when the prediction's first date is, to the day, one of ``days`` (the dates of the sessions that hold a
    question's evidence), else 0.

    It asks whether an answer names *when the thing was said*, which is what template QA teaches a module ("When did
    Maria mention Biscuit?" -> the session's date). LoCoMo's gold is often *when it happened*, resolved from a
    relative phrase ("last week" said on 2 October -> "last week of September"), so a module can score here and
    not in ``date_score``: the gap between the two is the resolution the training data did not teach.
    """
    said = mentions(prediction)
    return float(bool(said) and said[0].precision == "day" and said[0].first in days)
