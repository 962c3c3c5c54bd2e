"""``agent-memory eval paper``: the seed paper's probes on its own data, each table beside the paper's numbers.

Back et al., "Understanding LoRA as Knowledge Memory" (ICML 2026); data in
``../shared/data/lora_memory_paper`` (path given, never copied). Built so far:

* ``capacity``: PhoneBook exact match versus load and rank, tokens stored per LoRA
  parameter, train speed (the consolidation benchmark's runner), written as
  ``capacity.json`` (after every run, so a killed probe resumes), ``capacity.png``
  and ``capacity.md``;
* ``internalization`` and ``hybrid``: PaperQA, in :mod:`agent_memory.evals.internalization`;
* ``multimodule`` and ``merge``: PhoneBook's 128K sectors, in :mod:`agent_memory.evals.multimodule`.

Each probe writes ``PROBE.json``, ``PROBE.md`` and ``PROBE.png`` into the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from agent_memory.consolidation.bench import plot, run_capacity_saved

PROBES = ("capacity", "internalization", "multimodule", "merge", "hybrid")

PAPER_CAPACITY = (
    "Paper (Llama-3.1-8B, PhoneBook): recall holds, then collapses once the load passes what the rank can "
    "store; tokens stored per LoRA parameter at >= 95% exact match peak near r=4, at about 8e-4."
)


def run_capacity_probe(
    data_dir: str | Path,
    out: str | Path,
    loads: list[str],
    ranks: list[int],
    max_epochs: int = 40,
    echo: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run (or resume) the capacity grid into ``out``; returns the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_capacity_saved(out / "capacity.json", data_dir, loads, ranks, max_epochs, echo=echo, **kwargs)
    plot(results, out / "capacity.png")
    (out / "capacity.md").write_text(capacity_report(results))
    return results


def capacity_report(results: dict[str, Any]) -> str:
    """The capacity table, the best tokens/parameter per rank at >= 95% EM, and the paper's finding beside it."""
    runs = sorted(results["runs"], key=lambda r: (int(r["load"].rstrip("K")), r["rank"]))
    lines = [
        f"# Capacity probe: {results['backbone']} ({results['dtype']}), {results['machine'].get('cpu', '')}",
        "",
        "| load | facts | rank | lr | LoRA params | exact match | epochs | train s | train tok/s | tokens/param |",
        "|------|------:|-----:|---:|------------:|------------:|-------:|--------:|------------:|-------------:|",
    ]
    for r in runs:
        lr = f"{r['learning_rate']:.0e}" if r.get("learning_rate") else "-"
        lines.append(f"| {r['load']} | {r['facts']} | {r['rank']} | {lr} | {r['params'] / 1e6:.2f}M | {r['exact_match']:.3f} | "
                     f"{r['epochs']} | {r['seconds']:.0f} | {r['tokens_per_second']:.0f} | {r['tokens_per_param']:.2e} |")
    lines += ["", "Best tokens/parameter at >= 95% exact match, per rank (largest load that held):", ""]
    for rank in sorted({r["rank"] for r in runs}):
        held = [r for r in runs if r["rank"] == rank and r["exact_match"] >= 0.95]
        best = max(held, key=lambda r: r["tokens_per_param"], default=None)
        lines.append(f"- r={rank}: " + (f"{best['tokens_per_param']:.2e} ({best['load']})" if best else "no load held"))
    lines += ["", PAPER_CAPACITY]
    if results.get("ceiling"):
        c = results["ceiling"]
        lines += ["", f"Training speed bound here: frozen-weight matmuls run at {c['matmul_gflops']:.0f} GFLOP/s, "
                      f"so all-layer LoRA training cannot pass {c['tokens_per_second']:.0f} tokens/s."]
    if results.get("baseline"):
        b = results["baseline"]
        lines += ["", f"Same slice and rank, back to back: this trainer {b['tokens_per_second']:.0f} tok/s, the naive "
                      f"fp32 peft loop {b['naive_fp32_tokens_per_second']:.0f} tok/s ({b['speedup_vs_naive']:.2f}x)."]
    return "\n".join(lines) + "\n"
