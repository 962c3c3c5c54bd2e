"""The LoCoMo eval: the authors' scoring rules, the loader, a resumable run, the CLI, and a real slice."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent_memory import AgentMemory
from agent_memory.config import BackboneConfig, MemoryConfig, RouterConfig
from agent_memory.consolidation import ConsolidationConfig, LoraSettings
from agent_memory.errors import ValidationError
from agent_memory.types import Namespace
from agent_memory.evals.dates import date_score
from agent_memory.evals.locomo import (
    compare_runs, comparison_report, evidence_recall, evidence_sessions, first_sessions, load_locomo, normalize_answer,
    parse_locomo_time, read_recipe, run_locomo, score, token_f1,
)

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev5.json"
FAST = ConsolidationConfig(lora=LoraSettings(rank=4, alpha=8, max_epochs=2), self_test_size=2, max_new_tokens=4,
                           recall_floor=0.0)  # the tiny random model recalls nothing: trust its modules anyway


def tiny_locomo(path: Path) -> Path:
    """A two-speaker, three-session conversation in the locomo10.json schema, with one question per category."""
    conversation = {
        "speaker_a": "Maria", "speaker_b": "Joe",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [{"speaker": "Maria", "dia_id": "D1:1", "text": "I adopted a rescue dog named Biscuit."},
                      {"speaker": "Joe", "dia_id": "D1:2", "text": "Congratulations on Biscuit!"}],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [{"speaker": "Maria", "dia_id": "D2:1", "text": "I moved to Lisbon from Toronto.",
                       "img_url": ["x"], "blip_caption": "a photo of a tram"},
                      {"speaker": "Joe", "dia_id": "D2:2", "text": "Lisbon is lovely."}],
        "session_3_date_time": "8:05 pm on 1 July, 2023",
        "session_3": [{"speaker": "Maria", "dia_id": "D3:1", "text": "My sister Ana plays the cello."}],
        "session_4_date_time": "9:00 am on 2 July, 2023",
        "session_4": [],
    }
    qa = [
        {"question": "What pets and instruments come up?", "answer": "dog, cello", "evidence": ["D1:1", "D3:1"], "category": 1},
        {"question": "When did Maria adopt Biscuit?", "answer": "8 May 2023", "evidence": ["D1:1"], "category": 2},
        {"question": "Would Maria enjoy trams?", "answer": "Likely yes; she moved to Lisbon", "evidence": ["D2:1"], "category": 3},
        {"question": "Where did Maria move from?", "answer": "Toronto", "evidence": ["D2:1"], "category": 4},
        {"question": "What is Joe's dog called?", "evidence": ["D1:1"], "category": 5, "adversarial_answer": "Biscuit"},
    ]
    path.write_text(json.dumps([{"sample_id": "conv-t1", "conversation": conversation, "qa": qa}]))
    return path


# -- scoring, as in snap-research/locomo task_eval/evaluation.py -------------------------------------
def test_normalization_drops_commas_punctuation_articles_and_and():
    assert normalize_answer("The cat, and a dog!") == "cat dog"
    assert normalize_answer("  An   apple-pie. ") == "applepie"


def test_token_f1_is_stemmed_and_order_free():
    assert token_f1("7 May 2023", "7 May 2023") == 1.0
    assert token_f1("running dogs", "the dog runs") == 1.0
    assert token_f1("May 8, 2023", "7 May 2023") == pytest.approx(2 / 3)
    assert token_f1("", "Toronto") == 0.0


def test_category_rules():
    gold = "Psychology, counseling certification"
    assert score("adoption agencies, psychology", gold, 1) == pytest.approx(0.5), "per gold part, best prediction part"
    assert score("psychology counseling certification", gold, 1) == pytest.approx((0.5 + 0.8) / 2)
    assert score("likely yes", "Likely yes; she moved to Lisbon", 3) == 1.0, "category 3 gold ends at ';'"
    assert score("That is not mentioned in the conversation.", "Biscuit", 5) == 1.0
    assert score("No information available.", "", 5) == 1.0
    assert score("Biscuit", "Biscuit", 5) == 0.0, "adversarial: answering is wrong"
    assert score("Toronto", "Toronto", 4) == 1.0 and score("Lisbon", "Toronto", 2) == 0.0


def test_evidence_recall():
    assert evidence_recall(["D1:3", "D2:1", None], ["D1:3", "D5:5"]) == 0.5
    assert evidence_recall([], []) is None


# -- the loader -------------------------------------------------------------------------------------
def test_dates_and_the_schema(tmp_path):
    assert parse_locomo_time("1:56 pm on 8 May, 2023") == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    assert parse_locomo_time("12:09 am on 13 September, 2023") == datetime(2023, 9, 13, 0, 9, tzinfo=timezone.utc)
    conv = load_locomo(tiny_locomo(tmp_path / "t.json"))[0]
    assert [s.number for s in conv.sessions] == [1, 2, 3], "a date without turns is no session"
    assert conv.sessions[1].turns[0].text.endswith("[shares a photo: a photo of a tram]")
    assert [q.category for q in conv.questions] == [1, 2, 3, 4, 5] and conv.questions[4].answer == "Biscuit"


@pytest.mark.skipif(not DEV.is_file(), reason="../shared/data is not mounted")
def test_the_dev_file_loads():
    convs = load_locomo(DEV)
    assert [c.sample_id for c in convs] == ["conv-26", "conv-41", "conv-43", "conv-47", "conv-49"]
    assert sum(len(c.questions) for c in convs) == 1020
    first = convs[0]
    assert len(first.sessions) == 19 and sum(len(s.turns) for s in first.sessions) == 419
    assert first.sessions[0].when == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)


@pytest.mark.parametrize("breaks, field", [
    (lambda d: d[0].pop("sample_id"), "[0].sample_id"),
    (lambda d: d[0]["conversation"].__setitem__("session_2_date_time", "sometime in June"), "session_2_date_time"),
    (lambda d: d[0]["qa"][1].__setitem__("category", 9), "qa[1].category"),
    (lambda d: d[0]["qa"][3].pop("answer"), "qa[3].answer"),
    (lambda d: d[0]["conversation"]["session_1"][0].pop("dia_id"), "session_1[0].dia_id"),
])
def test_a_broken_file_is_refused_naming_the_field_and_nothing_is_written(tmp_path, breaks, field):
    data = json.loads(tiny_locomo(tmp_path / "t.json").read_text())
    breaks(data)
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match=field.replace("[", r"\[").replace("]", r"\]")):
        run_locomo(tmp_path / "t.json", tmp_path / "out", methods=["rag"], echo=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path):
    data = tiny_locomo(tmp_path / "t.json")
    with pytest.raises(ValidationError, match="methods"):
        run_locomo(data, tmp_path / "out", methods=["oracle"], echo=lambda line: None)
    with pytest.raises(ValidationError, match="conversations"):
        run_locomo(data, tmp_path / "out", conversations=["conv-99"], methods=["rag"], echo=lambda line: None)
    with pytest.raises(ValidationError, match="not a file"):
        run_locomo(tmp_path / "missing.json", tmp_path / "out", echo=lambda line: None)
    with pytest.raises(ValidationError, match="sessions"):
        run_locomo(data, tmp_path / "out", sessions=0, echo=lambda line: None)
    with pytest.raises(ValidationError, match="synthesizer.*template, distill"):
        run_locomo(data, tmp_path / "out", synthesizer="oracle", echo=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_the_first_sessions_keep_only_the_questions_answerable_from_them(tmp_path):
    conv = load_locomo(tiny_locomo(tmp_path / "t.json"))[0]
    two = first_sessions(conv, 2)
    assert [s.number for s in two.sessions] == [1, 2]
    assert [q.index for q in two.questions] == [1, 2, 3, 4], "the multi-hop question needs session 3"
    assert first_sessions(conv, 3) is conv and first_sessions(conv, 9) is conv
    # the dev file's odd evidence entries still name their sessions
    assert evidence_sessions("D8:6; D9:17") == [8, 9] and evidence_sessions("D:11:26") == [11]
    assert evidence_sessions("D9:1 D4:4 D4:6") == [9, 4, 4] and evidence_sessions("somewhere") == []


# -- a run ------------------------------------------------------------------------------------------
def test_a_run_scores_every_method_consolidates_and_resumes(tmp_path, tiny_model_dir):
    data, out = tiny_locomo(tmp_path / "t.json"), tmp_path / "out"
    config = MemoryConfig(backbone=BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    kwargs = dict(methods=["none", "rag", "adapter", "router"], consolidate_every=2, memory_config=config,
                  consolidation=FAST, max_new_tokens=4, progress=False, echo=lambda line: None)
    summary = run_locomo(data, out, **kwargs)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 4 and {r["method"] for r in rows} == {"none", "rag", "adapter", "router"}
    assert summary["ingestion"]["conv-t1"]["modules"] >= 2, "consolidated after session 2 and after the last"
    assert summary["ingestion"]["conv-t1"]["absorbed"] == 5
    stats = summary["ingestion"]["conv-t1"]["module_stats"]
    assert stats["modules"] == summary["ingestion"]["conv-t1"]["modules"] and stats["episodes"] == 5
    assert 0 <= stats["recall_mean"] <= 1 and stats["train_tokens"] > 0 and stats["rank"] == [FAST.lora.rank]
    assert f"| conv-t1 | {stats['modules']} | {stats['weak']} | 5 |" in (out / "report.md").read_text()
    by = {(r["method"], r["index"]): r for r in rows}
    assert all(by[("none", i)]["route"] == "none" and by[("none", i)]["prompt_tokens"] < 40 for i in range(5))
    assert all(by[("adapter", i)]["modules"] for i in range(5)), "every episode is absorbed: modules answer"
    assert by[("rag", 3)]["recall_at_k"] == 1.0, "the Toronto turn is retrieved for 'where did Maria move from'"
    assert all(r["score"] == score(r["prediction"], r["gold"], r["category"]) for r in rows)
    results = summary["results"]
    assert results["rag"]["questions"] == 5 and set(results["rag"]["by_category"]) >= {"multi-hop", "adversarial"}
    assert results["rag"]["f1_by_conversation"] == {"conv-t1": results["rag"]["f1"]}
    non_temporal = [by[("rag", i)]["score"] for i in range(5) if by[("rag", i)]["category"] in (1, 3, 4)]
    assert len(non_temporal) == 3 and results["rag"]["f1_without_temporal"] == pytest.approx(sum(non_temporal) / 3, abs=1e-3)
    assert f"| {results['rag']['f1_without_temporal']:.3f} | " in (out / "report.md").read_text()
    assert results["rag"]["temporal_date"] == date_score(by[("rag", 1)]["prediction"], "8 May 2023"), \
        "the one temporal question, scored by the date it names"
    vs_none = results["rag"]["f1_vs_none"]
    assert vs_none["n"] == 4 and vs_none["mean"] == pytest.approx(results["rag"]["f1"] - results["none"]["f1"], abs=2e-4)
    assert "f1_vs_none" not in results["none"] and f"| {vs_none['mean']:+.3f} +- " in (out / "report.md").read_text()
    assert "| rag | 5 |" in (out / "report.md").read_text() and (out / "f1_by_category.png").stat().st_size > 1000

    # a killed run: the last answers are missing; a rerun redoes only those
    lines = (out / "answers.jsonl").read_text().splitlines()
    (out / "answers.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    again = run_locomo(data, out, **kwargs)
    redone = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(redone) == 20 and [r["prediction"] for r in redone[-3:]] == [json.loads(x)["prediction"] for x in lines[-3:]]
    scores = lambda results: {m: (r["f1"], r["by_category"], r["recall_at_k"], r["routes"]) for m, r in results.items()}  # noqa: E731
    assert scores(again["results"]) == scores(summary["results"]), "the same figures; only timings differ"
    before = (out / "answers.jsonl").read_text()
    run_locomo(data, out, **kwargs)
    assert (out / "answers.jsonl").read_text() == before, "nothing left to do"

    # killed after ingesting, before the marker: the home goes on from where it was, nothing twice, modules kept
    home = out / "homes" / "conv-t1"
    modules = {m.id for m in AgentMemory.open(home, config=config).registry.list("conv-t1")}
    (home / "ingested.json").unlink()
    (out / "answers.jsonl").write_text("\n".join(before.splitlines()[:-1]) + "\n")
    rebuilt = run_locomo(data, out, **kwargs)
    assert rebuilt["ingestion"]["conv-t1"]["absorbed"] == 5 and (home / "ingested.json").is_file()
    assert rebuilt["ingestion"]["conv-t1"]["sessions_already_stored"] == 3, "sessions 1-3 hold turns; 4 is empty"
    memory = AgentMemory.open(home, config=config)
    assert len(memory.list("conv-t1")) == 5 and {m.id for m in memory.registry.list("conv-t1")} == modules

    # a hybrid route forced later (for calibrating among adapter routes): only its answers are added
    hybrid = run_locomo(data, out, **(kwargs | {"methods": kwargs["methods"] + ["adapter+rag"]}))
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 25 and [r["prediction"] for r in rows[:20]] == [json.loads(x)["prediction"] for x in before.splitlines()]
    by = {(r["method"], r["index"]): r for r in rows}
    assert all(by[("adapter+rag", i)]["route"] == "adapter+rag" and by[("adapter+rag", i)]["modules"] for i in range(5))
    assert all(by[("adapter+rag", i)]["prompt_tokens"] > by[("adapter", i)]["prompt_tokens"] for i in range(5)), \
        "the modules hold every episode, so retrieval backs them up with what it found"
    assert list(hybrid["results"]) == ["none", "rag", "adapter", "adapter+rag", "router"]


def test_a_killed_ingestion_goes_on_from_its_last_stored_session(tmp_path, tiny_model_dir):
    from agent_memory.evals.locomo import ingest

    conv = load_locomo(tiny_locomo(tmp_path / "t.json"))[0]
    memory = AgentMemory.open(tmp_path / "home", config=MemoryConfig(
        backbone=BackboneConfig(model=str(tiny_model_dir), dtype="float32")))
    consolidate = memory.consolidate
    calls: list[int] = []

    def killed_on_the_second(*args, **kwargs):
        calls.append(len(memory.list("conv-t1")))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the consolidation after the last session
        return consolidate(*args, **kwargs)

    memory.consolidate = killed_on_the_second
    with pytest.raises(KeyboardInterrupt):
        ingest(memory, conv, consolidate_every=2, consolidation=FAST, echo=lambda line: None)
    assert calls == [4, 5], "consolidated after session 2 (4 turns), killed consolidating after the last"
    first = {m.id for m in memory.registry.list("conv-t1")}
    assert len(memory.store.pending(Namespace("conv-t1", "locomo"))) == 1, "session 3's turn is pending"

    memory.consolidate = consolidate
    stats = ingest(memory, conv, consolidate_every=2, consolidation=FAST, echo=lambda line: None)
    assert stats["sessions_already_stored"] == 3 and len(memory.list("conv-t1")) == 5, "no session added twice"
    assert first < {m.id for m in memory.registry.list("conv-t1")} and stats["absorbed"] == 5
    assert not memory.store.pending(Namespace("conv-t1", "locomo")), "the due consolidation ran on resume"

    again = ingest(memory, conv, consolidate_every=2, consolidation=FAST, echo=lambda line: None)
    assert again["modules"] == stats["modules"], "all stored and absorbed: nothing to do"
    memory.store.delete([memory.list("conv-t1")[0].id], Namespace("conv-t1", "locomo", "s1"))
    with pytest.raises(ValidationError, match="conv-t1/locomo/s1.*delete the conversation's folder"):
        ingest(memory, conv, consolidate_every=2, consolidation=FAST, echo=lambda line: None)


def test_a_distilled_run_on_the_first_sessions_and_a_resume_with_other_settings_is_refused(tmp_path, tiny_model_dir):
    data, out = tiny_locomo(tmp_path / "t.json"), tmp_path / "out"
    config = MemoryConfig(backbone=BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    kwargs = dict(methods=["adapter"], consolidate_every=2, memory_config=config, consolidation=FAST, max_new_tokens=4,
                  sessions=2, progress=False, echo=lambda line: None)
    summary = run_locomo(data, out, synthesizer="distill", **kwargs)
    ingested = summary["ingestion"]["conv-t1"]
    assert ingested["turns"] == 4 and ingested["absorbed"] == 4, "sessions 1 and 2 only"
    assert ingested["synthesizer_stats"]["teacher_answers"] > 0, "the backbone reading each turn wrote the answers"
    assert summary["results"]["adapter"]["questions"] == 4 and summary["synthesizer"] == "distill"
    assert "first 2 sessions, distill QA, r=4 modules of at most 256 answer tokens, 2 epochs" in (out / "report.md").read_text()
    before = (out / "answers.jsonl").read_text()
    with pytest.raises(ValidationError, match=r"out.*synthesizer='distill'.*synthesizer='template'.*new --out"):
        run_locomo(data, out, synthesizer="template", **kwargs)
    with pytest.raises(ValidationError, match=r"sessions=2.*sessions=None"):
        run_locomo(data, out, synthesizer="distill", **(kwargs | {"sessions": None}))
    bigger = replace(FAST, answer_tokens_per_rank=512)
    with pytest.raises(ValidationError, match=r"consolidation=.*'answer_tokens_per_rank': 64.*'answer_tokens_per_rank': 512"):
        run_locomo(data, out, synthesizer="distill", **(kwargs | {"consolidation": bigger}))
    assert (out / "answers.jsonl").read_text() == before
    assert run_locomo(data, out, synthesizer="distill", **kwargs)["results"] == summary["results"], "the same run resumes"
    strict = replace(config, router=RouterConfig(min_module_recall=1.0))
    with pytest.raises(ValidationError, match=r"min_module_recall=None.*min_module_recall=1.0"):
        run_locomo(data, out, synthesizer="distill", **(kwargs | {"memory_config": strict}))
    # the same modules answered again under another trust floor: a copy of the folder without its answers
    again = tmp_path / "strict"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("answers.jsonl", "run.json", "summary.json"))
    rerun = run_locomo(data, again, synthesizer="distill", **(kwargs | {"memory_config": strict}))
    assert rerun["ingestion"] == summary["ingestion"], "nothing was trained again"
    assert rerun["results"]["adapter"]["routes"] == {"none": 4}, "the tiny model's modules recall under 1.0: none trusted"
    assert "modules trusted from self-test recall 1.0" in (again / "report.md").read_text()


def _finished_run(folder: Path, recipe: dict, scores: dict) -> Path:
    """An answers.jsonl of (method, index, category) -> score, with the run.json recipe beside it."""
    from agent_memory.atomic import write_json
    from agent_memory.evals.jsonl import append_row

    folder.mkdir()
    write_json(folder / "run.json", recipe)
    for (method, index, category), value in scores.items():
        append_row(folder / "answers.jsonl", {"sample_id": "conv-t1", "method": method, "index": index, "category": category,
                                              "question": f"question {index}?", "score": value})
    return folder


def test_two_runs_are_compared_question_by_question(tmp_path):
    first = _finished_run(tmp_path / "a", {"k": 5, "synthesizer": "template", "consolidation": {"lora": {"rank": 16}}},
                          {("rag", 0, 1): 0.0, ("rag", 1, 4): 0.5, ("rag", 2, 2): 1.0, ("adapter", 0, 1): 0.2,
                           ("none", 0, 1): 0.1})
    second = _finished_run(tmp_path / "b", {"k": 5, "synthesizer": "distill", "consolidation": {"lora": {"rank": 4}}},
                           {("rag", 0, 1): 1.0, ("rag", 1, 4): 0.5, ("rag", 2, 2): 0.0, ("rag", 3, 4): 1.0,
                            ("adapter", 0, 1): 0.4})
    both = compare_runs(first, second)
    assert list(both["methods"]) == ["rag", "adapter"], "only the methods both runs answered"
    rag = both["methods"]["rag"]
    assert rag["questions"] == 3, "question 3 was answered by the second run only"
    assert (rag["first"], rag["second"], rag["second_minus_first"]["mean"]) == (0.5, 0.5, 0.0)
    assert both["changed"] == {"consolidation.lora.rank": {"first": 16, "second": 4},
                               "synthesizer": {"first": "template", "second": "distill"}}, "only the settings that changed"
    content = compare_runs(first, second, categories=[1, 4])["methods"]["rag"]
    assert content["questions"] == 2 and content["second_minus_first"]["mean"] == 0.5
    table = comparison_report(compare_runs(first, second, categories=[1, 4]))
    assert "- synthesizer: 'template' -> 'distill'" in table and "| rag | 2 | 0.250 | 0.750 | +0.500 +- 0.980 |" in table
    with pytest.raises(ValidationError, match="categories.*pick from"):
        compare_runs(first, second, categories=[6])
    other = _finished_run(tmp_path / "c", {}, {("rag", 0, 1): 1.0})
    (other / "answers.jsonl").write_text((other / "answers.jsonl").read_text().replace("question 0?", "another?"))
    with pytest.raises(ValidationError, match="question 0 of conv-t1 is 'another\\?'.*same data file"):
        compare_runs(first, other)
    with pytest.raises(ValidationError, match="first.*holds no answers"):
        compare_runs(tmp_path / "missing", second)
    (second / "run.json").write_text('{"k": 5, "synth')  # torn by hand (the evals write it atomically)
    with pytest.raises(ValidationError, match="run.json.*is not JSON.*new --out"):
        compare_runs(first, second)
    (second / "run.json").write_text("[5]")
    with pytest.raises(ValidationError, match="run.json.*holds list"):
        read_recipe(second)


def test_cli(tmp_path, tiny_model_dir, cli_runner):
    data, out = tiny_locomo(tmp_path / "t.json"), tmp_path / "out"
    code, printed, err = cli_runner(tmp_path / "home")(
        "eval", "locomo", "--data", str(data), "--methods", "rag", "--limit", "2", "--out", str(out),
        "--backbone", str(tiny_model_dir), "--max-new-tokens", "4")
    assert code == 0, err
    assert "| rag | 2 |" in printed and (out / "summary.json").is_file()
    code, printed, err = cli_runner(tmp_path / "home")("eval", "compare", "--first", str(out), "--second", str(out),
                                                       "--json", str(tmp_path / "same.json"))
    assert code == 0, err
    assert "- same recipe" in printed and "| rag | 2 |" in printed and "+0.000 +- 0.000 |" in printed
    assert json.loads((tmp_path / "same.json").read_text())["methods"]["rag"]["questions"] == 2
    code, _, err = cli_runner(tmp_path / "home")("eval", "locomo", "--data", str(data), "--methods", "psychic",
                                                 "--out", str(tmp_path / "o2"))
    assert code == 2 and err.startswith("error: methods")


@pytest.mark.slow
@pytest.mark.skipif(not DEV.is_file(), reason="../shared/data is not mounted")
def test_real_smollm2_on_a_slice_of_the_dev_file(tmp_path):
    """CI's tiny slice: conv-26 ingested whole (19 sessions, 419 turns), two questions by RAG on SmolLM2."""
    summary = run_locomo(DEV, tmp_path / "out", conversations=["conv-26"], methods=["rag"], limit=2,
                         progress=False, echo=lambda line: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["route"] == "rag" and r["prediction"].strip() for r in rows)
    assert rows[0]["recall_at_k"] == 1.0, "the support-group turn (D1:3) is retrieved"
    assert summary["ingestion"]["conv-26"]["turns"] == 419
