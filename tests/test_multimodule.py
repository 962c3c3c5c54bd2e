"""The multi-module and merge probes: sector data checks, routing, module reuse across runs, the CLI."""

from __future__ import annotations

import json

import pytest

from agent_memory.errors import ValidationError
from agent_memory.evals.multimodule import digits_right, load_sectors

NAMES = [["Jeffrey Buck", "Albert Wyatt", "Maria Lopez"], ["Chen Wei", "Olga Petrova", "Tom Baker"],
         ["Amara Okafor", "Lars Berg", "Ines Duarte"]]


def write_sectors(folder, names=NAMES):
    sectors = folder / "phonebook_128K_sectors"
    sectors.mkdir(parents=True)
    for n, people in enumerate(names):
        rows = [f"Question: What is the phone number of {p}? Answer: {n}0{i}-555-01{i}{n}" for i, p in enumerate(people)]
        (sectors / f"sector_{n:02d}.csv").write_text("text\n" + "\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("answer,gold,expected", [
    ("603-556-7631", "603-556-7631", 1.0), ("The number is 603-550-0000.", "603-556-7631", 0.5),
    ("603-556", "603-556-7631", 0.0), ("I do not know", "603-556-7631", 0.0),
    ("111-111-1111 or 603-556-7631", "603-556-7631", 0.1),  # the first number counts (its last 1 matches)
])
def test_digits_right_compares_the_first_number_position_by_position(answer, gold, expected):
    assert digits_right(answer, gold) == pytest.approx(expected)


def test_sectors_load_their_first_facts(tmp_path):
    sectors = load_sectors(write_sectors(tmp_path), 2, 2)
    assert [[ex.question for ex in s] for s in sectors] == [
        ["What is the phone number of Jeffrey Buck?", "What is the phone number of Albert Wyatt?"],
        ["What is the phone number of Chen Wei?", "What is the phone number of Olga Petrova?"]]
    assert sectors[1][0].answer == "100-555-0101"


@pytest.mark.parametrize("sectors,facts,field", [
    (1, 2, "--sectors"), (2, 0, "--facts"), (2, 4, "--facts"), (4, 2, "--data"),
])
def test_bad_grid_is_refused_naming_the_option(tmp_path, sectors, facts, field):
    with pytest.raises(ValidationError) as err:
        load_sectors(write_sectors(tmp_path), sectors, facts)
    assert err.value.field == field


def test_a_malformed_row_is_refused_naming_file_and_row(tmp_path):
    folder = write_sectors(tmp_path)
    (folder / "phonebook_128K_sectors" / "sector_01.csv").write_text("text\nQuestion: x? Answer: 1\nJust a line\n")
    with pytest.raises(ValidationError) as err:
        load_sectors(folder, 2, 2)
    assert err.value.field == "sector_01.csv row 2"


def test_probes_route_merge_report_and_keep_their_modules(tmp_path, tiny_model_dir, cli_runner):
    data = write_sectors(tmp_path / "data")
    run = cli_runner(tmp_path / "home")
    out = tmp_path / "paper"
    common = ("--data", str(data), "--out", str(out), "--sectors", "3", "--facts", "3", "--rank", "2",
              "--max-epochs", "1", "--backbone", str(tiny_model_dir))
    code, printed, err = run("eval", "paper", "--probe", "multimodule", *common)
    assert code == 0, err
    assert sum(line.startswith("[sector") and "trained" in line for line in printed.splitlines()) == 3
    result = json.loads((out / "multimodule.json").read_text())
    assert list(result["methods"]) == ["oracle", "embedding", "provenance", "big", "rag", "provenance+rag"]
    assert result["questions"] == 9 and [m["rank"] for m in result["modules"]] == [2, 2, 2, 6]
    # one big module of rank N x r holds as many LoRA parameters as the N sector modules together
    assert result["modules"][3]["params"] == 3 * result["modules"][0]["params"]
    methods = result["methods"]
    assert methods["oracle"]["routing_accuracy"] == 1.0
    # the real MiniLM retrieves each question's own fact, so provenance routing is exact here
    assert result["retrieval_top1"] == 1.0 and methods["provenance"]["routing_accuracy"] == 1.0
    assert 0 <= methods["embedding"]["routing_accuracy"] <= 1
    assert all(len(v["by_sector"]) == 3 and 0 <= v["exact_match"] <= v["contains"] <= 1
               and 0 <= v["digits"] <= 1 for v in methods.values())
    report = (out / "multimodule.md").read_text()
    assert "| provenance+rag |" in report and "Paper (Llama-3.1-8B" in report and report.rstrip() in printed
    assert (out / "multimodule.png").read_bytes()[:4] == b"\x89PNG"

    # the merge probe reuses the committed sector modules: nothing is trained again
    code, printed, err = run("eval", "paper", "--probe", "merge", *common)
    assert code == 0, err
    assert "] trained" not in printed and printed.count("kept") == 3
    merged = json.loads((out / "merge.json").read_text())["methods"]
    assert list(merged) == ["none", "oracle"] + [f"{m} of {n}" for n in (2, 3) for m in ("ties", "linear", "cat", "cat_scaled")]
    assert merged["oracle"]["exact_match"] == methods["oracle"]["exact_match"]
    # a merge of the first two modules is asked only their sectors' facts
    assert merged["ties of 2"]["questions"] == 6 and len(merged["ties of 2"]["by_sector"]) == 2
    assert merged["cat of 3"]["questions"] == 9

    # another rank is another grid: its modules are trained afresh, the old ones dropped
    code, printed, err = run("eval", "paper", "--probe", "merge", *common[:-6], "--rank", "4", *common[-4:])
    assert code == 0, err
    assert printed.count("] trained") == 3
    assert {m["rank"] for m in json.loads((out / "merge.json").read_text())["modules"]} == {4}
