"""The capacity benchmark's plumbing on a tiny PhoneBook-format slice and a tiny backbone."""

from __future__ import annotations

import json

import pytest

from agent_memory.config import BackboneConfig
from agent_memory.consolidation.bench import load_phonebook, plot, run_capacity
from agent_memory.consolidation.trainer import LoraSettings
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
    baseline = results["baseline"]
    assert baseline["naive_fp32_tokens_per_second"] > 0 and baseline["tokens_per_second"] > 0
    ratio = baseline["tokens_per_second"] / baseline["naive_fp32_tokens_per_second"]
    assert baseline["speedup_vs_naive"] == pytest.approx(ratio, rel=0.01, abs=0.005), "the ratio, to two decimals"
    assert lines[-1].startswith("same slice, r=16, back to back: naive fp32 loop")
    ceiling = results["ceiling"]
    assert ceiling["tokens_per_second"] > 0 and ceiling["matmul_gflops"] > 0
    assert ceiling["flops_per_token"] == 2 * 4 * (32 * 32 * 2 + 2 * 16 * 32 + 3 * 32 * 64), "4 x linear params of 2 layers"
    assert results["machine"]["cores"] >= 1 and results["settings"]["max_epochs"] == 2
    out = tmp_path / "plot.png"
    plot(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_keeps_runs_made_with_the_same_settings(slice_dir, tiny_model_dir):
    config = BackboneConfig(model=str(tiny_model_dir), dtype="float32")
    saved: list[dict] = []
    first = run_capacity(slice_dir, ["1K"], [2], max_epochs=2, echo=lambda _: None, backbone_config=config,
                         on_run=lambda r: saved.append(json.loads(json.dumps(r))))
    assert saved and saved[-1]["runs"] == first["runs"], "results are handed out after each run"
    lines: list[str] = []
    handed: list[dict] = []
    again = run_capacity(slice_dir, ["1K"], [2, 4], max_epochs=2, echo=lines.append, backbone_config=config,
                         previous=first, on_run=lambda r: handed.append(json.loads(json.dumps(r))))
    assert handed[0]["baseline"] == first["baseline"], "a kill before this run's own baseline keeps the previous one"
    assert again["runs"][0] == first["runs"][0] and "[1K r=2] kept from the previous results" in lines
    assert [r["rank"] for r in again["runs"]] == [2, 4]
    other = run_capacity(slice_dir, ["1K"], [2], max_epochs=3, echo=lines.append, backbone_config=config, previous=first)
    assert other["runs"][0]["epochs"] <= 3 and "kept" not in lines[-2], "other settings: rerun"


def test_benchmark_trains_only_the_target_modules_and_keeps_their_runs(slice_dir, tiny_model_dir):
    config = BackboneConfig(model=str(tiny_model_dir), dtype="float32")
    mlp = LoraSettings(target_modules=LoraSettings.parse_target_modules("gate_proj, up_proj,down_proj"))
    assert mlp.target_modules == ("gate_proj", "up_proj", "down_proj")
    every = run_capacity(slice_dir, ["1K"], [2], max_epochs=1, echo=lambda _: None, backbone_config=config)
    first = json.loads(json.dumps(run_capacity(slice_dir, ["1K"], [2], max_epochs=1, echo=lambda _: None,
                                               backbone_config=config, settings=mlp)))
    # tiny model: hidden 32, intermediate 64, 2 layers; r=2 factors of gate, up (32 -> 64) and down (64 -> 32)
    assert first["runs"][0]["params"] == 2 * 3 * 2 * (32 + 64) < every["runs"][0]["params"]
    assert first["settings"]["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
    lines: list[str] = []
    run_capacity(slice_dir, ["1K"], [2], max_epochs=1, echo=lines.append, backbone_config=config, settings=mlp,
                 previous=first)
    assert "[1K r=2] kept from the previous results" in lines, "the settings read back from JSON are the same"


def test_paper_capacity_probe_writes_a_report_beside_the_paper_and_resumes(slice_dir, tiny_model_dir, tmp_path, cli_runner):
    run = cli_runner(tmp_path / "home")
    out = tmp_path / "paper"
    args = ("eval", "paper", "--probe", "capacity", "--data", str(slice_dir), "--out", str(out), "--loads", "1K",
            "--ranks", "2", "--max-epochs", "2", "--backbone", str(tiny_model_dir))
    code, printed, err = run(*args)
    assert code == 0, err
    results = json.loads((out / "capacity.json").read_text())
    assert [(r["load"], r["rank"]) for r in results["runs"]] == [("1K", 2)]
    report = (out / "capacity.md").read_text()
    assert "| 1K | 2 | 2 |" in report and "Paper (Llama-3.1-8B, PhoneBook)" in report and report.rstrip() in printed
    assert (out / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    code, printed, err = run(*args)
    assert code == 0 and "[1K r=2] kept from the previous results" in printed
    code, _, err = run("eval", "paper", "--probe", "magic", "--data", str(slice_dir), "--out", str(out))
    assert code == 2 and err.startswith("error: --probe: 'magic' is not built; use one of: capacity, internalization, "
                                        "multimodule, merge, hybrid")
