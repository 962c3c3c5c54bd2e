"""The store benchmark runs end to end on a small case and reports every figure it promises."""

from __future__ import annotations

import json

import pytest

from agent_memory.bench_store import run_store_benchmark, synthetic_episodes
from agent_memory.cli import main


def test_synthetic_episodes_are_reproducible_and_spread_over_namespaces():
    a, b = synthetic_episodes(200, seed=3), synthetic_episodes(200, seed=3)
    assert [e.text for e in a] == [e.text for e in b]
    assert len({e.namespace.user_id for e in a}) == 10


def test_benchmark_reports_latency_throughput_and_ratios(embedder):
    lines: list[str] = []
    results = run_store_benchmark(sizes=[60], modes=["embedded"], queries=5, adds=5, echo=lines.append, embedder=embedder)
    assert set(results["backends"]) == {"in-memory", "embedded"}
    for res in results["backends"].values():
        assert res["single_add"]["n"] == 5 and res["single_add"]["p50_ms"] > 0
        assert res["batched_add"]["episodes_per_s"] > 0
        row = res["search"]["60"]
        assert row["episodes"] == 60 and row["n"] == 5 and row["p95_ms"] >= row["p50_ms"] > 0
        assert row["ratio_vs_in_memory_p50"] > 0
    assert results["backends"]["in-memory"]["search"]["60"]["ratio_vs_in_memory_p50"] == 1.0
    assert results["embed_speedup_vs_sentence_transformers"] > 0
    assert any(line.startswith("[embedded] single add p50") for line in lines)


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as done:
        main(["--home", str(tmp_path / "h"), "bench", "store", "--sizes", "30", "--modes", "embedded",
              "--queries", "3", "--adds", "3", "--json", str(out)])
    assert done.value.code == 0
    data = json.loads(out.read_text())
    assert data["backends"]["embedded"]["search"]["30"]["episodes"] == 30
    assert "wrote" in capsys.readouterr().out
