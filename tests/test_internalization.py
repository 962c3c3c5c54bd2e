"""The PaperQA internalization probe: scoring, data checks, a resumable run on the tiny backbone, the CLI."""

from __future__ import annotations

import json

import pytest

from agent_memory.errors import ValidationError
from agent_memory.evals.internalization import (
    SentenceRetriever, load_paperqa, neighbourhood, paper_episodes, raw_chunks, rouge_l, sentences, training_examples,
)
from agent_memory.atomic import write_json
from agent_memory.evals.jsonl import append_row, read_rows

INTRO = ("Maria moved to Lisbon in 2021. Her dog Biscuit likes the city. The MCTD planner uses guidance levels "
         "(as meta-actions). It beats Diffuser on mazes! Who knew?")
PAPER = {"title": "Tiny", "introduction": INTRO, "QA": [
    {"level": 1, "question": "where did maria move", "answer": "lisbon"},
    {"level": 3, "question": "what is the dog name", "answer": "Biscuit is the dog name."},
]}


@pytest.fixture
def paper_dir(tmp_path):
    folder = tmp_path / "lora_memory_paper"
    folder.mkdir()
    (folder / "paperQA.json").write_text(json.dumps([PAPER]))
    return folder


@pytest.mark.parametrize("prediction,gold,expected", [
    ("x b c d", "x c d e", 0.75), ("Lisbon.", "lisbon", 1.0), ("", "lisbon", 0.0), ("porto", "lisbon", 0.0),
    ("b x", "x b", 0.5),
])
def test_rouge_l_is_the_lcs_f_measure(prediction, gold, expected):
    assert rouge_l(prediction, gold) == pytest.approx(expected)


def test_introduction_becomes_sentence_episodes_raw_chunks_and_keyword_qa(tiny):
    assert sentences(INTRO) == ["Maria moved to Lisbon in 2021.", "Her dog Biscuit likes the city.",
                                "The MCTD planner uses guidance levels (as meta-actions).", "It beats Diffuser on mazes!",
                                "Who knew?"]
    episodes = paper_episodes(PAPER, 0)
    assert [e.speaker for e in episodes] == ["the paper"] * 5 and episodes[1].id == "p0-s1"
    assert neighbourhood(episodes, 1)(episodes[0]) == "Maria moved to Lisbon in 2021. Her dog Biscuit likes the city."
    chunks = raw_chunks(PAPER)
    assert [c.question for c in chunks] == ["", ""] and " ".join(c.answer for c in chunks) == " ".join(sentences(INTRO))
    qa = training_examples(tiny, PAPER, 0, "qa")
    assert {e.kind for e in qa} == {"qa"} and "What did the paper say about Lisbon?" in [e.question for e in qa]
    richer = training_examples(tiny, PAPER, 0, "qa+summary+rewrite")
    assert [e for e in richer if e.kind == "qa"] == qa and len([e for e in richer if e.kind == "rewrite"]) == len(qa)
    summary = [e for e in richer if e.kind == "summary"]
    assert len(summary) == 1 and summary[0].answer.startswith("Maria moved to Lisbon in 2021. Her dog Biscuit")
    assert "What do you remember about Lisbon?" in [e.question for e in richer]
    distill = training_examples(tiny, PAPER, 0, "distill")
    assert [e.question for e in distill] == [e.question for e in qa]
    assert all(e.context and e.context.startswith("Maria moved to Lisbon") for e in distill[:2])


@pytest.mark.parametrize("papers,field", [
    ([], "paperQA.json"),
    ([{"introduction": "", "QA": []}], "paperQA.json[0].introduction"),
    ([{"introduction": "Text.", "QA": [{"level": 1, "question": "q"}]}], "paperQA.json[0].QA[0].answer"),
    ([{"introduction": "Text."}], "paperQA.json[0].QA[0].level"),
])
def test_broken_paperqa_is_refused_naming_the_field(tmp_path, papers, field):
    (tmp_path / "paperQA.json").write_text(json.dumps(papers))
    with pytest.raises(ValidationError) as err:
        load_paperqa(tmp_path)
    assert err.value.field == field


def test_probe_runs_every_method_writes_a_report_and_resumes(paper_dir, tiny_model_dir, tmp_path, cli_runner):
    run = cli_runner(tmp_path / "home")
    out = tmp_path / "paper"
    args = ("eval", "paper", "--probe", "internalization", "--data", str(paper_dir), "--out", str(out),
            "--max-epochs", "1", "--backbone", str(tiny_model_dir))
    code, printed, err = run(*args)
    assert code == 0, err
    rows = read_rows(out / "internalization.jsonl")
    assert [r["method"] for r in rows] == ["none", "context", "raw", "qa", "qa+summary+rewrite", "distill"]
    assert all(len(r["answers"]) == 2 and 0 <= r["f1"] <= 1 for r in rows)
    assert rows[0]["train"] is None and rows[2]["train"]["examples"] == 2 and rows[5]["train"]["epochs"] == 1
    assert rows[4]["train"]["examples"] == 2 * rows[3]["train"]["examples"] + 1, "each QA's rewrite, one summary"
    summary = json.loads((out / "internalization.json").read_text())
    assert summary["papers"] == [0] and list(summary["methods"]) == [r["method"] for r in rows]
    assert set(summary["methods"]["qa"]["by_level"]) == {"1", "3"}
    report = (out / "internalization.md").read_text()
    assert "| distill |" in report and "Paper (Llama-3.1-8B" in report and report.rstrip() in printed
    assert (out / "internalization.png").read_bytes()[:4] == b"\x89PNG"

    # a kill mid-write leaves half a line: that cell (and only it) runs again
    lines = (out / "internalization.jsonl").read_text().splitlines()
    (out / "internalization.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    code, printed, err = run(*args)
    assert code == 0, err
    assert [line for line in printed.splitlines() if line.startswith("[paper")] == [
        line for line in printed.splitlines() if line.startswith("[paper 0 distill]")] != []
    assert [r["method"] for r in read_rows(out / "internalization.jsonl")] == [r["method"] for r in rows]

    # the hybrid probe shares the log: none/context/distill are reused, rag and distill+rag share one training
    code, printed, err = run("eval", "paper", "--probe", "hybrid", *args[4:])
    assert code == 0, err
    assert [line.split("]")[0] for line in printed.splitlines() if line.startswith("[paper")] == [
        "[paper 0 rag", "[paper 0 distill+rag"]
    rows = {r["method"]: r for r in read_rows(out / "internalization.jsonl")}
    assert rows["rag"]["train"] is None and rows["distill+rag"]["train"]["epochs"] == 1
    hybrid = json.loads((out / "hybrid.json").read_text())
    assert list(hybrid["methods"]) == ["none", "context", "rag", "distill", "distill+rag"] and hybrid["probe"] == "hybrid"
    report = (out / "hybrid.md").read_text()
    assert report.startswith("# Hybrid probe") and "complementary" in report and report.rstrip() in printed
    assert set(hybrid["paired"]) == {"distill+rag - rag", "distill+rag - distill"}
    assert hybrid["paired"]["distill+rag - rag"]["n"] == 2 and "- distill+rag - rag: " in report

    code, _, err = run("eval", "paper", "--probe", "internalization", "--data", str(paper_dir), "--out", str(out),
                       "--papers", "3")
    assert code == 2 and "--papers" in err
    code, _, err = run("eval", "paper", "--probe", "internalization", "--data", str(paper_dir), "--out", str(out),
                       "--methods", "none,magic")
    assert code == 2 and "--methods" in err


def test_retrieval_gives_the_nearest_sentences_in_the_papers_order():
    from agent_memory.embedder import OnnxEmbedder

    retrieve = SentenceRetriever(OnnxEmbedder.bundled(), sentences(INTRO), k=2)
    # the dog sentence ranks first, yet the two come back in the paper's order
    assert retrieve("What is the name of Maria's dog?") == "Maria moved to Lisbon in 2021. Her dog Biscuit likes the city."
    assert retrieve("Which planner beats Diffuser?") == ("The MCTD planner uses guidance levels (as meta-actions). "
                                                         "It beats Diffuser on mazes!")


def test_result_log_drops_a_line_cut_short_and_appends_on_a_fresh_line(tmp_path):
    log = tmp_path / "rows.jsonl"
    assert read_rows(log) == []
    append_row(log, {"a": 1})
    log.write_text(log.read_text() + '{"a": 2, "b"')  # killed mid-write
    assert read_rows(log) == [{"a": 1}] and log.read_text() == '{"a": 1}\n'
    append_row(log, {"a": 3})
    assert read_rows(log) == [{"a": 1}, {"a": 3}]


def test_a_json_result_cut_off_mid_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    import agent_memory.atomic

    marker = tmp_path / "ingested.json"
    write_json(marker, {"absorbed": 5})

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(agent_memory.atomic.os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_json(marker, {"absorbed": 6})
    assert json.loads(marker.read_text()) == {"absorbed": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["ingested.json"], "the temp file is removed"
