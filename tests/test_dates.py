"""Temporal answers scored by the date they name (`evals/dates.py`): gold windows, answer mentions, the score."""

from __future__ import annotations

from datetime import date

import pytest

from agent_memory.evals.dates import date_score, gold_window, mentions, said_score

D = date


@pytest.mark.parametrize("gold, first, last, precision", [
    ("7 May 2023", D(2023, 5, 7), D(2023, 5, 7), "day"),
    ("February 24, 2023", D(2023, 2, 24), D(2023, 2, 24), "day"),
    ("The week before October 13th, 2023.", D(2023, 10, 6), D(2023, 10, 13), "day"),
    ("The sunday before 3` July 2023", D(2023, 6, 26), D(2023, 7, 3), "day"),
    ("Two weeks before 11 August 2023", D(2023, 7, 28), D(2023, 8, 11), "day"),
    ("two weekends before 17 July 2023", D(2023, 7, 3), D(2023, 7, 17), "day"),
    ("Saturday after 11 September, 2023.", D(2023, 9, 11), D(2023, 9, 18), "day"),
    ("The week of 23 August 2023", D(2023, 8, 16), D(2023, 8, 30), "day"),
    ("November 5-6, 2022", D(2022, 11, 5), D(2022, 11, 6), "day"),
    ("On the night of October 30 to 31, 2022", D(2022, 10, 30), D(2022, 10, 31), "day"),
    ("Januarty 5, 2024", D(2024, 1, 5), D(2024, 1, 5), "day"),
    ("June 2023", D(2023, 6, 1), D(2023, 6, 30), "month"),
    ("April.2023", D(2023, 4, 1), D(2023, 4, 30), "month"),
    ("first week of April 2022", D(2022, 4, 1), D(2022, 4, 30), "month"),
    ("February 2024", D(2024, 2, 1), D(2024, 2, 29), "month"),
    ("The summer of 2022", D(2022, 6, 1), D(2022, 8, 31), "month"),
    ("winter 2023", D(2022, 12, 1), D(2023, 2, 28), "month"),
    ("In 2013", D(2013, 1, 1), D(2013, 12, 31), "year"),
    ("2022", D(2022, 1, 1), D(2022, 12, 31), "year"),
])
def test_a_gold_answer_is_a_window_of_days(gold, first, last, precision):
    window = gold_window(gold)
    assert (window.first, window.last, window.precision) == (first, last, precision)


@pytest.mark.parametrize("gold", ["4 years", "10 years ago", "her mother", "13 August", "Seattle", "19 days", "Yes"])
def test_a_gold_that_names_no_dated_day_is_not_a_date_question(gold):
    assert gold_window(gold) is None and date_score("On 13 August 2023.", gold) is None


def test_mentions_are_found_in_order_with_their_precision():
    text = "Maria adopted Coco in 2023-07-03, then on May 4, 2023, at the age of 18, and in March 2023 or 2024."
    assert [(m.first, m.precision) for m in mentions(text)] == [
        (D(2023, 7, 3), "day"), (D(2023, 5, 4), "day"), (D(2023, 3, 1), "month"), (D(2024, 1, 1), "year")]
    assert mentions("I may 5 times go, at 18:59, on 13 August") == [], \
        "a modal 'may', a time and a date without a year name no date"
    assert [(m.first, m.precision) for m in mentions("on 31 June 2023")] == [(D(2023, 6, 1), "month")], \
        "an impossible day is dropped; its month and year remain"


@pytest.mark.parametrize("prediction, gold, expected", [
    ("On 7 May 2023.", "7 May 2023", 1.0),
    ("It was May 7, 2023, I think", "7 May 2023", 1.0),
    ("On 8 May 2023.", "7 May 2023", 0.0),
    ("In May 2023.", "7 May 2023", 0.0),            # less precise than the gold
    ("2023", "7 May 2023", 0.0),                    # the year alone: what token F1 credits
    ("On 9 June 2023.", "The week before 9 June 2023", 1.0),   # the session in which it was said
    ("On 3 June 2023.", "The week before 9 June 2023", 1.0),
    ("On 1 June 2023.", "The week before 9 June 2023", 0.0),
    ("On 12 June 2023.", "June 2023", 1.0),         # a day answers a month question
    ("In June 2023.", "June 2023", 1.0),
    ("On 2 July 2023.", "June 2023", 0.0),
    ("2022", "2022", 1.0),
    ("On 4 March 2022.", "In 2022", 1.0),
    ("2023", "2022", 0.0),
    ("On 6 January 2024.", "Summer 2024", 0.0),
    ("Sam went there.", "7 May 2023", 0.0),         # no date at all
    ("On 1 May 2023, or on 7 May 2023.", "7 May 2023", 0.0),   # only the first date counts
])
def test_the_first_date_of_the_answer_is_scored_against_the_window(prediction, gold, expected):
    assert date_score(prediction, gold) == expected


@pytest.mark.parametrize("prediction, expected", [
    ("On 2 October 2023.", 1.0),                    # the day the evidence was said
    ("On 14 November 2023.", 1.0),                 # any session that holds evidence
    ("On 11 August 2023, and on 2 October 2023.", 0.0),   # only the first date counts
    ("In October 2023.", 0.0),                      # a month is not the day
    ("On 3 October 2023.", 0.0),
    ("No date here.", 0.0),
])
def test_the_said_date_score_asks_for_the_day_of_an_evidence_session(prediction, expected):
    sessions = {date(2023, 10, 2), date(2023, 11, 14)}
    assert said_score(prediction, sessions) == expected
    assert said_score(prediction, set()) == 0.0


def test_naming_when_it_was_said_is_not_naming_when_it_happened():
    """A module that learned "When did John mention the wedding?" -> the session's day answers a gold resolved from
    "last week" wrongly by date and rightly by said-date: the two scores measure different things."""
    answer = "On 2 October 2023."
    assert date_score(answer, "last week of September 2023") == 0.0
    assert said_score(answer, {date(2023, 10, 2)}) == 1.0
