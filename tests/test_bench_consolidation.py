"""The capacity benchmark's plumbing on a tiny PhoneBook-format slice and a tiny backbone."""

from __future__ import annotations

import json

import pytest

from agent_memory.config import BackboneConfig
from agent_memory.consolidation.bench import load_phonebook, plot, run_capacity
from agent_memory.errors import ValidationError


@pytest.fixture
def slice_dir(tmp_path):
    rows = [("What is the phone number of Ann Lee", "603-556-7631"), ("What is the phone number of Bo Ito", "705-882-9365")]
    (tmp_path / "phonebook_qa_1K.csv").write_text(
        "text\n" + "".join(f"Question: {q}? Answer: {a}\n" for q, a in rows), encoding="utf-8"
    )
    (tmp_path / "phonebook_eval_qa_1K.json").write_text(json.dumps([{"question": q, "answer": a} for q, a in rows[:1]]))
    return tmp_path


def test_loads_the_paper_format(slice_dir):
    train, evals, chars = load_phonebook(slice_dir, "1K")
    assert [(q.question, q.answer) for q in train][0] == ("What is the phone number of Ann Lee?", "603-556-7631")
    assert evals[0].question == "What is the phone number of Ann Lee?" and chars > 0
    with pytest.raises(ValidationError):
        load_phonebook(slice_dir, "2K")


def test_benchmark_reports_recall_speed_and_the_naive_baseline(slice_dir, tiny_model_dir, tmp_path):
    lines: list[str] = []
    results = run_capacity(slice_dir, ["1K"], [2, 4], max_epochs=2, echo=lines.append,
                           backbone_config=BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    assert [(r["load"], r["rank"]) for r in results["runs"]] == [("1K", 2), ("1K", 4)]
    small, big = results["runs"]
    assert big["params"] == 2 * small["params"], "LoRA parameters grow linearly with rank"
    for run in results["runs"]:
        assert 0.0 <= run["exact_match"] <= 1.0 and run["tokens_per_second"] > 0 and run["facts"] == 2
        assert run["tokens_per_param"] == pytest.approx(run["slice_tokens"] / run["params"])
    assert results["naive_fp32_tokens_per_second"] > 0 and results["speedup_vs_naive"] > 0
    assert lines[-1].startswith("naive fp32 loop")
    out = tmp_path / "plot.png"
    plot(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
