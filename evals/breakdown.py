"""Where a LoCoMo run's F1 comes from: every method on slices of the questions, with paired differences.

``breakdown`` pools the answers of one or more finished ``eval locomo`` runs. Each method is taken from the
first run that answered it, so a consolidated run that forced only the adapter routes can be read beside the
``none``/``icl``/``rag`` rows of a run without consolidation on the same data (those routes never touch a
module). Only the questions of categories 1-4 that every method answered are kept, so every number in a
column is over the same questions and every difference is paired.

The slices: all of them, temporal (category 2, the dates template-trained modules answer best) and the rest
(1, 3, 4). With ``seen`` (another run's folder, e.g. the slice the router policy was fitted on) the questions
that run answered and those it did not are split the same way, so a figure on never-fitted questions is read
off directly. Per slice: each method's F1, the per-question oracle over the forced routes, and each method
minus ``baseline`` with its 95% interval.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.errors import ValidationError
from agent_memory.evals.jsonl import read_rows, same_question
from agent_memory.evals.locomo import METHODS, score
from agent_memory.evals.stats import paired_interval, rounded_mean

Key = tuple[str, int]
"""A question: (sample_id, index)."""


def _pooled(results: Sequence[Path]) -> tuple[dict[str, dict[Key, dict[str, Any]]], dict[str, str]]:
    """method -> question -> row, each method from the first run that answered it, and where each came from."""
    by_method: dict[str, dict[Key, dict[str, Any]]] = {}
    source: dict[str, str] = {}
    texts: dict[Key, str] = {}
    for folder in map(Path, results):
        rows = [r for r in read_rows(folder / "answers.jsonl") if r["category"] != 5]
        if not rows:
            raise ValidationError("--results", f"{folder / 'answers.jsonl'} holds no answers of categories 1-4",
                                  "pass the --out folder of an `agent-memory eval locomo` run")
        for row in rows:
            same_question(texts, row, "--results", folder)
            if source.setdefault(row["method"], str(folder)) == str(folder):
                by_method.setdefault(row["method"], {})[(row["sample_id"], row["index"])] = row
    return by_method, source


def _slices(questions: dict[Key, int], seen: set[Key] | None) -> dict[str, list[Key]]:
    """Slice name -> its questions (sorted), from each question's category and whether ``seen`` holds it."""
    groups: dict[str, Callable[[Key], bool]] = {"all": lambda k: True}
    if seen is not None:
        groups |= {"seen": lambda k: k in seen, "unseen": lambda k: k not in seen}
    out = {}
    for name, member in groups.items():
        keys = sorted(k for k in questions if member(k))
        out[name] = keys
        out[f"{name} temporal"] = [k for k in keys if questions[k] == 2]
        out[f"{name} 1,3,4"] = [k for k in keys if questions[k] != 2]
    return out


def breakdown(results: Sequence[str | Path], seen: str | Path | None = None, baseline: str = "rag",
              constants: Sequence[str] = ()) -> dict[str, Any]:
    """F1 per method on each slice of the questions every pooled method answered, and each minus ``baseline``.

    Each of ``constants`` is scored as one more method that gives that answer to every question (say ``2023``: what
    a route earns on temporal questions by naming the right year, whatever it remembers); never in the oracle.
    """
    if not results:
        raise ValidationError("--results", "no run given", "pass the --out folder of an `agent-memory eval locomo` run")
    by_method, source = _pooled([Path(r) for r in results])
    if baseline not in by_method:
        raise ValidationError("--baseline", f"no run answered with {baseline!r}", f"pick one of {', '.join(sorted(by_method))}")
    methods = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    forced = [m for m in methods if m != "router"]
    for text in constants:
        name = f"constant {text!r}"
        by_method[name] = {k: {"score": score(text, r["gold"], r["category"])} for k, r in by_method[baseline].items()}
        source[name] = "the same answer to every question, scored here"
        methods.append(name)
    shared = set.intersection(*(set(rows) for rows in by_method.values()))
    if not shared:
        raise ValidationError("--results", "no question was answered by every method",
                              "pool runs on the same conversations (see each run's --conversations)")
    category = {k: by_method[baseline][k]["category"] for k in shared}
    seen_keys = None
    if seen is not None:
        seen_keys = {(r["sample_id"], r["index"]) for r in read_rows(Path(seen) / "answers.jsonl")}
        if not seen_keys:
            raise ValidationError("--seen", f"{Path(seen) / 'answers.jsonl'} holds no answers",
                                  "pass the --out folder of the run whose questions count as seen")
    slices = {}
    for name, keys in _slices(category, seen_keys).items():
        scores = {m: [by_method[m][k]["score"] for k in keys] for m in methods}
        slices[name] = {
            "questions": len(keys), "f1": {m: rounded_mean(scores[m]) for m in methods},
            "oracle": rounded_mean([max(by_method[m][k]["score"] for m in forced) for k in keys]) if forced else None,
            "minus_baseline": {m: paired_interval([a - b for a, b in zip(scores[m], scores[baseline])])
                               for m in methods if m != baseline and keys}}
    return {"results": [str(r) for r in results], "seen": str(seen) if seen is not None else None, "baseline": baseline,
            "source": {m: source[m] for m in methods}, "conversations": sorted({k[0] for k in shared}),
            "routes": _routes(by_method.get("router", {}), shared), "slices": slices}


def _routes(router: dict[Key, dict[str, Any]], shared: set[Key]) -> dict[str, int]:
    """How often the router took each route on the shared questions."""
    return dict(Counter(router[key]["route"] for key in sorted(shared & router.keys())).most_common())


def breakdown_report(table: dict[str, Any]) -> str:
    """Two markdown tables: F1 per method and slice, then each method minus the baseline (paired 95% interval)."""
    names = [n for n, s in table["slices"].items() if s["questions"]]
    head = " | ".join(f"{n} ({table['slices'][n]['questions']})" for n in names)
    lines = [f"# Breakdown of {', '.join(table['conversations'])}", "",
             *(f"- {m}: from {src}" for m, src in table["source"].items()),
             *([f"- seen: the questions {table['seen']} answered"] if table["seen"] else []),
             f"- router routes: {', '.join(f'{r} {n}' for r, n in table['routes'].items()) or 'no router rows'}", "",
             f"| method | {head} |", "|---|" + "---:|" * len(names)]
    methods = list(table["source"])
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(f"{table['slices'][n]['f1'][method]:.3f}" for n in names) + " |")
    if table["slices"]["all"]["oracle"] is not None:
        lines.append("| per-question oracle over the forced routes | "
                     + " | ".join(f"{table['slices'][n]['oracle']:.3f}" for n in names) + " |")
    lines += ["", f"Minus `{table['baseline']}`, paired by question (95% interval):", "",
              f"| method | {head} |", "|---|" + "---:|" * len(names)]
    for method in (m for m in methods if m != table["baseline"]):
        cells = (table["slices"][n]["minus_baseline"][method] for n in names)
        lines.append(f"| {method} | " + " | ".join(f"{d['mean']:+.3f} +- {d['ci95']:.3f}" for d in cells) + " |")
    return "\n".join(lines) + "\n"
