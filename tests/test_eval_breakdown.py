"""`eval breakdown`: pooled runs, slices of the questions, paired differences against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_memory.errors import ValidationError
from agent_memory.evals.breakdown import breakdown, breakdown_plot, breakdown_report
from agent_memory.evals.jsonl import append_row

CATEGORY = {0: 2, 1: 1, 2: 4, 3: 2, 4: 3, 5: 5}
"""conv-a's questions: two temporal (0, 3), three others, one adversarial (5, never in a breakdown)."""


def _run(folder: Path, scores: dict[str, list[float]], routes: list[str] | None = None, sample_id: str = "conv-a") -> Path:
    """A finished run's answers.jsonl: per method, the score of questions 0, 1, ... of ``sample_id`` (appended to
    what ``folder`` holds)."""
    folder.mkdir(exist_ok=True)
    for method, values in scores.items():
        for index, value in enumerate(values):
            append_row(folder / "answers.jsonl", {
                "sample_id": sample_id, "method": method, "index": index, "category": CATEGORY[index],
                "question": f"question {index}?", "gold": f"gold {index}", "score": value,
                "route": routes[index] if method == "router" and routes else method})
    return folder


@pytest.fixture
def runs(tmp_path):
    consolidated = _run(tmp_path / "consolidated", {"adapter": [1.0, 0.0, 0.2, 0.6],
                                                    "router": [1.0, 0.5, 0.2, 0.6]},
                        routes=["adapter+rag", "rag", "rag", "adapter+rag"])
    plain = _run(tmp_path / "plain", {"none": [0.0, 0.0, 0.0, 0.0, 0.3, 1.0], "rag": [0.0, 0.5, 0.4, 0.2, 0.1, 0.0],
                                      "router": [0.9] * 6})
    _run(tmp_path / "other", {"rag": [0.5]}, sample_id="conv-b")
    return consolidated, plain, _run(tmp_path / "slice", {"rag": [0.0, 0.5]})


def test_methods_are_pooled_from_the_first_run_that_answered_them_over_the_shared_questions(runs):
    consolidated, plain, _ = runs
    table = breakdown([consolidated, plain])
    assert table["source"] == {"none": str(plain), "rag": str(plain), "adapter": str(consolidated),
                               "router": str(consolidated)}, "the consolidated run's router, not the plain one's"
    every = table["slices"]["all"]
    assert every["questions"] == 4, "question 4 has no adapter answer, question 5 is adversarial"
    assert every["f1"] == {"none": 0.0, "rag": 0.275, "adapter": 0.45, "router": 0.575}
    assert every["oracle"] == 0.625, "best forced route per question: 1.0, 0.5, 0.4, 0.6"
    assert every["minus_baseline"]["router"]["mean"] == pytest.approx(0.3) and every["minus_baseline"]["router"]["n"] == 4
    assert "rag" not in every["minus_baseline"]
    assert table["slices"]["all temporal"]["f1"] == {"none": 0.0, "rag": 0.1, "adapter": 0.8, "router": 0.8}
    assert table["slices"]["all 1,3,4"]["f1"]["adapter"] == 0.1
    assert table["routes"] == {"adapter+rag": 2, "rag": 2}
    assert "seen" not in table["slices"]
    assert breakdown([plain, consolidated])["source"]["router"] == str(plain), "order decides"
    fixed = breakdown([consolidated, plain], constants=["gold"])["slices"]["all"]
    assert fixed["f1"]["constant 'gold'"] == 0.6667, "one of the two gold tokens on every question"
    assert fixed["oracle"] == 0.625 and fixed["minus_baseline"]["constant 'gold'"]["mean"] == pytest.approx(0.6667 - 0.275, abs=1e-4)


def test_consolidated_runs_of_different_conversations_pool_into_one_table(tmp_path):
    _run(tmp_path / "plain", {"rag": [0.2, 0.0]})
    plain = _run(tmp_path / "plain", {"rag": [0.4, 0.6]}, sample_id="conv-b")
    a = _run(tmp_path / "a", {"adapter": [1.0, 0.0]})
    b = _run(tmp_path / "b", {"adapter": [0.0, 0.5]}, sample_id="conv-b")
    again = _run(tmp_path / "again", {"adapter": [0.0, 0.0]})
    table = breakdown([a, b, again, plain])
    assert table["conversations"] == ["conv-a", "conv-b"] and table["slices"]["all"]["questions"] == 4
    assert table["slices"]["all"]["f1"] == {"rag": 0.3, "adapter": 0.375}, "conv-a's adapter from a, not from again"
    assert table["source"] == {"rag": str(plain), "adapter": f"{a}, {b}"}
    assert f"- adapter: from {a}, {b}" in breakdown_report(table)


def test_seen_questions_are_split_from_the_unseen(runs):
    consolidated, plain, fitted = runs
    table = breakdown([consolidated, plain], seen=fitted, baseline="adapter")
    assert [table["slices"][n]["questions"] for n in ("seen", "unseen", "seen temporal", "unseen temporal")] == [2, 2, 1, 1]
    assert table["slices"]["seen"]["f1"]["rag"] == 0.25 and table["slices"]["unseen"]["f1"]["rag"] == 0.3
    assert table["slices"]["seen temporal"]["minus_baseline"]["rag"]["mean"] == pytest.approx(-1.0)
    text = breakdown_report(table)
    assert "| method | all (4) | all temporal (2) | all 1,3,4 (2) | seen (2) |" in text
    assert "| router | 0.575 | 0.800 | 0.350 |" in text and "| per-question oracle over the forced routes | 0.625 |" in text
    assert "Minus `adapter`" in text and "| rag | -0.175 +- " in text
    assert "- router routes: adapter+rag 2, rag 2" in text


def test_bad_input_names_the_option(runs, tmp_path):
    consolidated, plain, _ = runs
    with pytest.raises(ValidationError, match="baseline.*no run answered with 'icl'.*adapter, none, rag, router"):
        breakdown([consolidated, plain], baseline="icl")
    with pytest.raises(ValidationError, match="results.*holds no answers"):
        breakdown([tmp_path / "missing"])
    with pytest.raises(ValidationError, match="seen.*holds no answers"):
        breakdown([consolidated, plain], seen=tmp_path / "missing")
    with pytest.raises(ValidationError, match="no question was answered by every method"):
        breakdown([consolidated, tmp_path / "other"], baseline="adapter")
    renamed = _run(tmp_path / "renamed", {"icl": [0.0]})
    (renamed / "answers.jsonl").write_text((renamed / "answers.jsonl").read_text().replace("question 0?", "another?"))
    with pytest.raises(ValidationError, match="question 0 of conv-a is 'another\\?'.*same data file"):
        breakdown([consolidated, renamed])


def test_cli(runs, tmp_path, cli_runner):
    consolidated, plain, fitted = runs
    code, printed, err = cli_runner(tmp_path / "home")(
        "eval", "breakdown", "--results", str(consolidated), "--results", str(plain), "--seen", str(fitted),
        "--constant", "gold", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "| constant 'gold' | 0.667 |" in printed and "| router | +0.300 +- " in printed and f"wrote {tmp_path / 'b.json'}" in printed
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "b.png").stat().st_size > 1000
    assert json.loads((tmp_path / "b.json").read_text())["slices"]["unseen"]["questions"] == 2
    code, _, err = cli_runner(tmp_path / "home")("eval", "breakdown", "--results", str(plain), "--baseline", "psychic")
    assert code == 2 and "baseline" in err


def test_temporal_questions_are_also_scored_by_date_against_a_constant_year_and_chance(tmp_path):
    from tests.test_locomo import tiny_locomo

    data = tiny_locomo(tmp_path / "tiny.json")
    run = tmp_path / "run"
    run.mkdir()
    gold = {0: ("dog, cello", 1), 1: ("8 May 2023", 2), 3: ("Toronto", 4)}
    said = {"rag": {0: "a dog", 1: "In 2023.", 3: "Toronto"},
            "adapter": {0: "On 27 June 2023.", 1: "On 8 May 2023.", 3: "On 27 June 2023."}}
    for method, answers in said.items():
        for index, prediction in answers.items():
            answer, category = gold[index]
            append_row(run / "answers.jsonl", {
                "sample_id": "conv-t1", "method": method, "index": index, "category": category,
                "question": f"question {index}?", "gold": answer, "prediction": prediction, "score": 0.5, "route": method})
    table = breakdown([run], constants=["2023"], data=data, baseline="random session date")
    assert "date" not in table["slices"]["all"] and "date" not in table["slices"]["all 1,3,4"]
    dated = table["slices"]["all temporal"]["date"]
    assert dated["questions"] == 1
    assert dated["accuracy"] == {"rag": 0.0, "adapter": 1.0, "constant '2023'": 0.0, "random session date": 0.3333}, \
        "the year alone is not the day; one of the three sessions with turns is 8 May"
    assert dated["minus_baseline"]["adapter"]["mean"] == pytest.approx(0.6667, abs=1e-4)
    assert dated["oracle"] == 1.0
    said = table["slices"]["all temporal"]["said"]
    assert said["questions"] == 1 and said["accuracy"] == {"rag": 0.0, "adapter": 1.0, "constant '2023'": 0.0,
                                                           "random session date": 0.3333}, \
        "the evidence of question 1 is in session 1, said on 8 May 2023"
    assert "said" not in breakdown([run], constants=["2023"])["slices"]["all temporal"], "without --data, no evidence dates"
    every = table["slices"]["all"]
    assert every["f1"]["constant '2023'"] == pytest.approx(0.5 / 3, abs=1e-4), "token F1 gives the year half the date"
    with pytest.raises(ValidationError, match="--data.*holds no conv-a.*the file the runs were made on"):
        breakdown([run, _run(tmp_path / "plain", {"none": [0.0]})], data=data)
    text = breakdown_report(table)
    assert "Date score on temporal questions" in text and "| adapter | 1.000 | +0.667 +- 0.000 |" in text
    assert "Said-date score on the same questions" in text
    breakdown_plot(table, tmp_path / "dates.png")
    assert (tmp_path / "dates.png").stat().st_size > 1000
