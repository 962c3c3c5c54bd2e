"""Router calibration: leave-one-conversation-out fitting never scores what it fitted on; a real run's features."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from agent_memory.config import BackboneConfig, MemoryConfig
from agent_memory.errors import ValidationError
from agent_memory.evals.calibration import calibration_report, leave_one_out, route_samples
from agent_memory.evals.locomo import run_locomo
from agent_memory.router import RouteFeatures, RulePolicy

from tests.test_locomo import tiny_locomo


def sample(conversation, top_score, none, rag):
    features = RouteFeatures(top_score=top_score, relevant=1, recent_turns=4).to_dict()
    return {"conversation": conversation, "index": 0, "features": features, "quality": {"none": none, "rag": rag},
            "router": None, "route_as_run": None}


def test_fitted_thresholds_come_from_the_other_conversations_only():
    # in a and b, weak retrieval (0.3) misleads and strong retrieval (0.6) helps; c behaves the other way round
    a = [sample("a", 0.3, 0.5, 0.0), sample("a", 0.6, 0.0, 1.0)]
    b = [sample("b", 0.3, 0.5, 0.0), sample("b", 0.6, 0.0, 1.0)]
    c = [sample("c", 0.3, 0.0, 1.0), sample("c", 0.6, 0.0, 1.0)]
    result = leave_one_out(a + b + c)
    folds = {f["held_out"]: f for f in result["folds"]}
    assert RulePolicy().decide(RouteFeatures(**a[0]["features"]))[0] == "rag", "the default retrieves at 0.3"
    # fitted without c (on a, b): refuse weak retrieval, which is wrong for c: c's score shows it, it is not hidden
    assert folds["c"]["params"]["rag_min"] > 0.3 and folds["c"]["f1_fitted"] == 0.5 and folds["c"]["f1_default"] == 1.0
    assert folds["c"]["fitted_on"] == ["a", "b"] and folds["c"]["routes_fitted"] == {"none": 1, "rag": 1}
    # fitted on b and c, where retrieving at 0.3 wins overall, the default stays, and a's weak question is lost
    assert folds["a"]["params"]["rag_min"] == 0.2 and folds["a"]["f1_fitted"] == folds["a"]["f1_default"] == 0.5
    assert folds["a"]["f1_oracle"] == 0.75
    assert folds["a"]["best_fixed_route"] == "rag" and folds["a"]["f1_best_fixed_route"] == 0.5
    assert result["questions"] == 6 and result["pooled"]["f1_oracle"] == pytest.approx((0.75 * 4 + 1.0 * 2) / 6, abs=1e-4)
    # held out, the fitted policy loses c's weak question (0 instead of 1, one of six); on a and b it picks as the default
    assert result["pooled"]["fitted_minus_default"]["n"] == 6
    assert result["pooled"]["fitted_minus_default"]["mean"] == pytest.approx(-1 / 6, abs=1e-4)
    table = calibration_report(result)
    assert "Fitted minus default rules, paired over the same held-out questions: -0.167 +- " in table
    assert "default_minus_as_run" not in result["pooled"] and "Default rules minus" not in table, "no router answers"
    # c's fit moves rag_min only: with no modules in the samples, the module thresholds are never exercised
    assert "| rag_min 0.35, centroid_min 0.45, trust_recall 0.9, modules_for_when_only True | none 1, rag 1 |" in table, "each fold's thresholds"
    with pytest.raises(ValidationError, match="two or more"):
        leave_one_out(a)


def two_conversations(path):
    data = tiny_locomo(path)
    samples = json.loads(data.read_text())
    samples.append({**samples[0], "sample_id": "conv-t2"})
    data.write_text(json.dumps(samples))
    return data


def test_a_finished_run_is_calibrated_from_its_recorded_features_or_its_homes(tmp_path, tiny_model_dir, cli_runner):
    data = two_conversations(tmp_path / "t.json")
    out = tmp_path / "out"
    config = MemoryConfig(backbone=BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    run_locomo(data, out, methods=["none", "icl", "rag", "router"], memory_config=config, max_new_tokens=4,
               progress=False, echo=lambda line: None)
    found = route_samples(data, out, echo=lambda line: None)
    assert len(found) == 8, "categories 1-4 of both conversations"
    assert all(set(s["quality"]) == {"none", "icl", "rag"} for s in found)
    # the recomputed features lead the default policy to the very route the router took when it answered
    assert [RulePolicy().decide(RouteFeatures(**s["features"]))[0] for s in found] == [s["route_as_run"] for s in found]
    # the router's rows record its features; recomputed from the homes (older runs) they are the same
    answers = out / "answers.jsonl"
    recorded = answers.read_text()
    rows = [json.loads(line) for line in recorded.splitlines()]
    assert sum("features" in r for r in rows) == sum(r["method"] == "router" for r in rows) > 0
    answers.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "features"}) + "\n" for r in rows))
    assert route_samples(data, out, echo=lambda line: None) == found
    shutil.rmtree(out / "homes")
    with pytest.raises(ValidationError, match="do not record their features"):
        route_samples(data, out, echo=lambda line: None)
    answers.write_text(recorded)
    assert route_samples(data, out, echo=lambda line: None) == found, "recorded features: no home needed"

    code, printed, err = cli_runner(tmp_path / "home")("eval", "calibrate", "--data", str(data), "--results", str(out))
    assert code == 0, err
    summary = json.loads((out / "calibration.json").read_text())
    assert [f["held_out"] for f in summary["folds"]] == ["conv-t1", "conv-t2"]
    assert all(f["f1_router_as_run"] is not None for f in summary["folds"])
    assert summary["pooled"]["default_minus_as_run"]["n"] == 8 and "Default rules minus the router as run" in printed
    assert "| **all** | 8 |" in printed and (out / "calibration.md").is_file()

    code, _, err = cli_runner(tmp_path / "home")("eval", "calibrate", "--data", str(data), "--results", str(tmp_path / "x"))
    assert code == 2 and "--results" in err

    # a consolidated run that forced only some routes (here icl, all scored 1) takes the others from another run
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(out / "run.json", partial / "run.json")
    (partial / "answers.jsonl").write_text("".join(json.dumps(r | {"score": 1.0} if r["method"] == "icl" else r) + "\n"
                                                   for r in rows if r["method"] in ("icl", "router")))
    assert all(set(s["quality"]) == {"icl"} for s in route_samples(data, partial, echo=lambda line: None))
    filled = route_samples(data, partial, echo=lambda line: None, routes_from=out)
    assert filled == [s | {"quality": s["quality"] | {"icl": 1.0}} for s in found], "the run's own icl comes first"
    with pytest.raises(ValidationError, match="routes-from.*forced no route that.*did not"):
        route_samples(data, partial, echo=lambda line: None, routes_from=partial)
    every = tmp_path / "every"  # forced every route: nothing to fill in, and no complaint (pooled with a partial run)
    every.mkdir()
    shutil.copy(out / "run.json", every / "run.json")
    (every / "answers.jsonl").write_text(recorded + "".join(
        json.dumps(r | {"method": hybrid}) + "\n" for r in rows if r["method"] == "rag"
        for hybrid in ("adapter", "adapter+rag", "adapter+icl")))
    assert route_samples(data, every, echo=lambda line: None, routes_from=partial) == \
        route_samples(data, every, echo=lambda line: None)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "answers.jsonl").write_text(answers.read_text().replace(rows[0]["question"], "another?"))
    with pytest.raises(ValidationError, match="routes-from.*is 'another\\?'.*same data file"):
        route_samples(data, partial, echo=lambda line: None, routes_from=renamed)
    code, printed, err = cli_runner(tmp_path / "home")("eval", "calibrate", "--data", str(data), "--results", str(partial),
                                                       "--routes-from", str(out))
    assert code == 0, err
    assert f"the routes a run did not force, from {out}" in printed
    assert json.loads((partial / "calibration.json").read_text())["routes_from"] == str(out)


def test_runs_of_different_conversations_are_pooled_each_read_with_its_own_settings(tmp_path, tiny_model_dir, cli_runner):
    # say conv-t1 was consolidated in one sitting on its first 2 sessions, conv-t2 in another: two --out folders
    data = two_conversations(tmp_path / "t.json")
    config = MemoryConfig(backbone=BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    first, second = tmp_path / "first", tmp_path / "second"
    kwargs = dict(methods=["none", "icl", "rag", "router"], memory_config=config, max_new_tokens=4, progress=False,
                  echo=lambda line: None)
    run_locomo(data, first, conversations=["conv-t1"], sessions=2, k=3, **kwargs)
    run_locomo(data, second, conversations=["conv-t2"], **kwargs)
    found = route_samples(data, [first, second], echo=lambda line: None)
    assert Counter(s["conversation"] for s in found) == {"conv-t1": 3, "conv-t2": 4}, \
        "conv-t1: the questions of categories 1-4 answerable from sessions 1-2"
    # features as each router saw them: in session 2 (the recent turns hold the Lisbon turn), with k=3
    assert [RulePolicy().decide(RouteFeatures(**s["features"]))[0] for s in found] == [s["route_as_run"] for s in found]
    assert "icl" in [s["route_as_run"] for s in found if s["conversation"] == "conv-t1"]

    run = cli_runner(tmp_path / "home")
    code, _, err = run("eval", "calibrate", "--data", str(data), "--results", str(first), "--results", str(second))
    assert code == 2 and "--out" in err, "two runs: where the calibration goes must be said"
    code, _, err = run("eval", "calibrate", "--data", str(data), "--results", str(first), "--results", str(first),
                       "--out", str(tmp_path / "cal"))
    assert code == 2 and "answered in both" in err and not (tmp_path / "cal").exists()
    code, printed, err = run("eval", "calibrate", "--data", str(data), "--results", str(first), "--results", str(second),
                             "--out", str(tmp_path / "cal"))
    assert code == 0, err
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert [f["held_out"] for f in summary["folds"]] == ["conv-t1", "conv-t2"] and summary["questions"] == 7
    assert summary["runs"] == [str(first), str(second)] and "| **all** | 7 |" in printed
    assert not (first / "calibration.json").exists() and not (second / "calibration.json").exists()
