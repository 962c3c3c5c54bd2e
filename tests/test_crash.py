"""Crash safety: consolidations SIGKILLed at seeded random moments lose nothing and leave no half module.

CI runs a few trials; `agent-memory check crash --trials 20` runs the full count (README, Reliability).
"""

from __future__ import annotations

import json

from agent_memory.evals.reliability.crash import USER, check_home, run_crash_trials, seed_home


def test_killed_consolidations_leave_a_consistent_home(tmp_path):
    results = run_crash_trials(trials=2, seed=1, episodes=4, echo=lambda line: None)
    assert results["killed"] >= 1, "at least one run was really killed mid-way"
    assert results["violations"] == [] and results["lost_episodes"] == 0 and results["half_modules"] == 0
    assert results["uninterrupted"]["absorbed"] == 4


def test_the_checker_sees_a_lost_episode_and_a_half_module(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    ids = seed_home(home, str(tiny_model_dir), 3, seed=0)
    assert check_home(home, ids) == []
    assert any("lost" in p for p in check_home(home, ids + ["ep_missing"]))
    manifest = home / "modules" / USER / "alpha" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    fake = {"id": "mod_abc123", "user_id": USER, "agent_id": "alpha", "episode_ids": [ids[0]], "start": "", "end": "",
            "centroid": [], "rank": 4, "alpha": 8, "facts": 1, "examples": 0, "train_tokens": 0, "params": 0,
            "recall": 1.0, "weak": False, "backbone": "x", "backbone_fingerprint": "x", "created_at": ""}
    manifest.write_text(json.dumps({"modules": [fake]}))
    assert any("half module visible" in p for p in check_home(home, ids))
