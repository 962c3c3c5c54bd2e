"""The seed paper's multi-module and merge probes on PhoneBook's 128K sectors, at a size a CPU can train.

The paper trains one module per 8K-token sector (16 of them) and asks: does routing each
question to the right small module beat one big module of the same parameter budget, and
which router finds the right module? Then: can the modules be merged into one instead? Here
each of ``sectors`` sectors keeps its first ``facts`` phone numbers (48 = the 1K slice, which
one r=16 module holds), so the whole grid trains in minutes rather than days. Methods:

* ``oracle``: each question goes to its own sector's module (the ceiling of routing);
* ``embedding``: to the module whose centroid (mean MiniLM embedding of its facts) is nearest the
  question, the router's fallback when retrieval finds nothing absorbed;
* ``provenance``: retrieve the nearest fact and use the module that absorbed it, the product's router;
* ``big``: one module of rank ``sectors`` x r trained on every fact (the same number of LoRA parameters);
* ``rag``: no module, the retrieved fact in the prompt; ``provenance+rag``: both (the hybrid);
* ``none``: the backbone alone (the merge probe's floor: what a phone-number-shaped guess scores);
* merges into one module, as :class:`agent_memory.adapters.ResidentAdapters` does at serving time:
  ``ties`` (density 0.5), ``linear`` (mean of the factors), ``cat`` (the sum of the modules' updates)
  and ``cat_scaled`` (that sum times 1/sqrt(N), the product's concatenation); each of the first 2
  modules (``ties of 2``, asked only those sectors' facts) and of all of them (``ties of 4``).

Modules are committed to an :class:`AdapterRegistry` under ``out/modules`` (not for git), so a killed
run keeps every module it finished; answering takes a minute or two and is redone on every run. Scores:
the paper's strict exact match over every trained fact; beside it ``contains`` (the number appears in
the answer), since a model reading the fact in its prompt tends to answer in a sentence, and ``digits``
(the share of the gold number's 10 digits the first phone number in the answer gets right, position by
position; a random number scores about 0.1), which shows how much of a fact a merge keeps.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.adapters import ResidentAdapters
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig
from agent_memory.embedder import OnnxEmbedder
from agent_memory.errors import ValidationError
from agent_memory.registry import AdapterRegistry, ModuleInfo

from agent_memory.atomic import write_json
from agent_memory.consolidation.bench import PHONEBOOK_LINE
from agent_memory.consolidation.consolidator import mean_vector
from agent_memory.consolidation.trainer import LoraSettings, QAExample, teacher_prompt, train_lora
from agent_memory.evals.plots import grouped_bars

ROUTED = ("oracle", "embedding", "provenance", "big", "rag", "provenance+rag")
MERGED = ("ties", "linear", "cat", "cat_scaled")
PROBE_METHODS = {"multimodule": ROUTED, "merge": ("none", "oracle") + MERGED}
PAPER_FINDINGS = {
    "multimodule": "Paper (Llama-3.1-8B, 16 sectors of 8K tokens): many small modules with accurate routing beat one "
                   "big module of the same parameter budget, but a plain embedding router loses to the big module.",
    "merge": "Paper: merging works only for a few high-confidence modules (TIES best); concatenation collapses unless "
             "scaled by 1/sqrt(N).",
}
_USER = "phonebook"
ANSWER_TOKENS = 32
"""Room for an answer in a sentence ("The phone number of Jeffrey Buck is 603-556-7631."), not just the number."""


def load_sectors(data_dir: str | Path, sectors: int, facts: int) -> list[list[QAExample]]:
    """The first ``facts`` rows of sectors 0..sectors-1 of ``phonebook_128K_sectors``, checked."""
    folder = Path(data_dir) / "phonebook_128K_sectors"
    if sectors < 2:
        raise ValidationError("--sectors", f"{sectors} is too few to route between", "pass 2 to 16")
    if facts < 1:
        raise ValidationError("--facts", f"{facts} facts per sector", "pass a positive count (48 = the 1K slice)")
    out = []
    for n in range(sectors):
        path = folder / f"sector_{n:02d}.csv"
        if not path.is_file():
            raise ValidationError("--data", f"{path} does not exist", "pass the lora_memory_paper folder, and "
                                  "--sectors no larger than its sector count (16)")
        rows = [r.get("text") or "" for r in csv.DictReader(path.open(encoding="utf-8"))]
        parsed = [PHONEBOOK_LINE.match(r) for r in rows[:facts]]
        bad = next((i for i, m in enumerate(parsed) if m is None), None)
        if bad is not None:
            raise ValidationError(f"{path.name} row {bad + 1}", f"{rows[bad]!r} is not 'Question: ... Answer: ...'",
                                  "use the sector files released with the paper")
        if len(parsed) < facts:
            raise ValidationError("--facts", f"{path.name} has only {len(parsed)} facts", f"pass --facts {len(parsed)} or fewer")
        out.append([QAExample(*m.groups()) for m in parsed])
    return out


_PHONE = re.compile(r"\d{3}-\d{3}-\d{4}")


def digits_right(answer: str, gold: str) -> float:
    """Share of ``gold``'s digits that the first phone number in ``answer`` has at the same position (0 if none)."""
    found = _PHONE.search(answer)
    want = [c for c in gold if c.isdigit()]
    got = [c for c in found.group() if c.isdigit()] if found else []
    return sum(a == b for a, b in zip(got, want)) / len(want) if found and want else 0.0


def fact_line(ex: QAExample) -> str:
    return f"Question: {ex.question} Answer: {ex.answer}"


def ensure_module(backbone: Backbone, registry: AdapterRegistry, name: str, examples: Sequence[QAExample],
                  centroid: Sequence[float], settings: LoraSettings, echo: Callable[[str], None]) -> ModuleInfo:
    """The registry's module ``name`` trained with ``settings``; trained and committed first if it is missing."""
    for info in registry.list(_USER, name):
        if info.rank == settings.rank and info.facts == len(examples) and info.backbone_fingerprint == backbone.fingerprint:
            echo(f"[{name}] kept: {info.facts} facts, r={info.rank}, {info.train_seconds:.0f} s of training")
            return info
        registry.delete(info.id)  # another grid's module: retrain
    with registry.staging() as staged:
        peft_model, report = train_lora(backbone, examples, settings, "default", progress=True)
        try:
            peft_model.save_pretrained(str(staged))
        finally:
            backbone.model = peft_model.unload()
        info = ModuleInfo(
            id=registry.new_id(), user_id=_USER, agent_id=name, episode_ids=(), start="", end="",
            centroid=tuple(round(x, 6) for x in centroid), rank=settings.rank, alpha=settings.alpha,
            facts=len(examples), examples=len(examples), train_tokens=report.train_tokens,
            params=report.trainable_params, recall=report.final_accuracy, weak=report.final_accuracy < 0.95,
            backbone=backbone.name, backbone_fingerprint=backbone.fingerprint,
            created_at=datetime.now(timezone.utc).isoformat(), train_seconds=round(report.seconds, 1),
        )
        registry.commit(staged, info)
    echo(f"[{name}] trained: {info.facts} facts, r={info.rank}, {report.epochs} epochs, {report.seconds:.0f} s, "
         f"train accuracy {report.final_accuracy:.3f}")
    return info


class _Grid:
    """The trained modules, the questions, their embeddings and each router's choices."""

    def __init__(self, sectors: list[list[QAExample]], modules: list[ModuleInfo], big: ModuleInfo, embedder,
                 fact_vectors: Sequence[Sequence[float]]) -> None:
        import numpy as np

        self.questions = [(s, ex) for s, facts in enumerate(sectors) for ex in facts]
        self.modules, self.big = modules, big
        q = np.asarray(embedder.embed([ex.question for _, ex in self.questions]), dtype=np.float32)
        facts = np.asarray(fact_vectors, dtype=np.float32)
        centroids = np.asarray([m.centroid for m in modules], dtype=np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        self.retrieved = (q @ facts.T).argmax(axis=1)  # index of the nearest fact (facts and questions share order)
        self.route = {
            "oracle": [s for s, _ in self.questions],
            "embedding": (q @ centroids.T).argmax(axis=1).tolist(),
            "provenance": [self.questions[i][0] for i in self.retrieved],
        }

    def routing_accuracy(self, method: str) -> float:
        return sum(r == s for r, (s, _) in zip(self.route[method], self.questions)) / len(self.questions)

    def retrieval_accuracy(self) -> float:
        return sum(int(i) == n for n, i in enumerate(self.retrieved)) / len(self.questions)


def answer(backbone: Backbone, registry: AdapterRegistry, grid: _Grid, method: str, merged: int) -> list[str]:
    """The questions of the first ``merged`` sectors (all, for methods that merge nothing) answered by ``method``;
    questions that share a module set run as one batch."""
    n = len(grid.modules)
    asked = [i for i, (s, _) in enumerate(grid.questions) if method not in MERGED or s < merged]
    use_context = method.endswith("rag")
    prompts = {i: teacher_prompt(backbone, fact_line(grid.questions[int(grid.retrieved[i])][1]), grid.questions[i][1].question)
               if use_context else backbone.qa_prompt(grid.questions[i][1].question) for i in asked}
    weight = 1.0
    if method in MERGED:
        # the serving path's merge; weights as ResidentAdapters applies them (cat scales B by w/sqrt(N))
        weight = {"ties": 1.0, "linear": 1.0 / merged, "cat": math.sqrt(merged), "cat_scaled": 1.0}[method]
        groups = {tuple(range(merged)): asked}
    elif method == "big":
        groups = {(n,): asked}
    elif method in ("rag", "none"):
        groups = {(): asked}
    else:
        groups = {}
        for i, r in enumerate(grid.route[method.removesuffix("+rag")]):
            groups.setdefault((r,), []).append(i)
    combination = "cat" if method.startswith("cat") else method if method in MERGED else "ties"
    adapters = ResidentAdapters(backbone, registry, capacity=n + 1, combination=combination)
    answers: dict[int, str] = {}
    for key, indexes in groups.items():
        adapters.activate([(grid.modules + [grid.big])[m] for m in key], [weight] * len(key))
        with adapters.merged():
            out = backbone.complete([prompts[i] for i in indexes], max_new_tokens=ANSWER_TOKENS)
        answers.update(zip(indexes, out))
    return [answers[i] for i in asked]


def method_grid(probe: str, sectors: int) -> list[tuple[str, int]]:
    """(method, modules merged) to run: each merge of the first 2 sector modules and of all of them."""
    return [(m, sectors) for m in PROBE_METHODS[probe] if m not in MERGED] + \
        [(m, n) for n in sorted({2, sectors}) for m in PROBE_METHODS[probe] if m in MERGED]


def run_multimodule_probe(
    data_dir: str | Path,
    out: str | Path,
    probe: str = "multimodule",
    sectors: int = 4,
    facts: int = 48,
    settings: LoraSettings | None = None,
    backbone_config: BackboneConfig | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or keep) the sector modules and the big one, answer every fact with each method, write the report."""
    if probe not in PROBE_METHODS:
        raise ValidationError("--probe", f"{probe!r} is not a multi-module probe", f"use {' or '.join(PROBE_METHODS)}")
    data = load_sectors(data_dir, sectors, facts)
    settings = settings or LoraSettings(rank=16, alpha=32, max_epochs=40)
    big_settings = replace(settings, rank=settings.rank * sectors, alpha=settings.alpha * sectors, learning_rate=None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = Backbone.load(backbone_config or BackboneConfig())
    backbone.fingerprint  # noqa: B018 - hashed before any training touches the weights
    embedder = OnnxEmbedder.bundled()
    registry = AdapterRegistry(out / "modules")
    registry.sweep()

    everything = [ex for sector in data for ex in sector]
    vectors = embedder.embed([fact_line(ex) for ex in everything])  # in sector order, ``facts`` per sector
    modules = [ensure_module(backbone, registry, f"sector{n:02d}", ex, mean_vector(vectors[n * facts:(n + 1) * facts]),
                             settings, echo) for n, ex in enumerate(data)]
    big = ensure_module(backbone, registry, f"all{sectors:02d}", everything, mean_vector(vectors), big_settings, echo) \
        if "big" in PROBE_METHODS[probe] else modules[0]
    grid = _Grid(data, modules, big, embedder, vectors)
    results: dict[str, Any] = {
        "probe": probe, "backbone": backbone.name, "sectors": sectors, "facts_per_sector": facts,
        "questions": len(grid.questions), "retrieval_top1": round(grid.retrieval_accuracy(), 4),
        "modules": [{"name": m.agent_id, "facts": m.facts, "rank": m.rank, "params": m.params,
                     "train_seconds": m.train_seconds, "train_accuracy": round(m.recall, 4)}
                    for m in modules + ([big] if "big" in PROBE_METHODS[probe] else [])],
        "settings": {"rank": settings.rank, "alpha": settings.alpha, "learning_rate": settings.peak_learning_rate,
                     "big_rank": big_settings.rank, "big_learning_rate": big_settings.peak_learning_rate,
                     "max_epochs": settings.max_epochs},
        "methods": {},
    }
    for method, merged in method_grid(probe, sectors):
        name = f"{method} of {merged}" if method in MERGED else method
        answers = answer(backbone, registry, grid, method, merged)
        asked = [(s, ex) for s, ex in grid.questions if method not in MERGED or s < merged]
        hits = [a.strip() == ex.answer for a, (_, ex) in zip(answers, asked)]
        row = {"exact_match": round(sum(hits) / len(hits), 4),
               "contains": round(sum(ex.answer in a for a, (_, ex) in zip(answers, asked)) / len(hits), 4),
               "digits": round(sum(digits_right(a, ex.answer) for a, (_, ex) in zip(answers, asked)) / len(hits), 4),
               "questions": len(asked),
               "by_sector": [round(sum(h for h, (s, _) in zip(hits, asked) if s == n) / facts, 4)
                             for n in sorted({s for s, _ in asked})]}
        route = method.removesuffix("+rag")
        if route in grid.route:
            row["routing_accuracy"] = round(grid.routing_accuracy(route), 4)
        row["examples"] = [{"question": ex.question, "gold": ex.answer, "answer": a}
                           for a, (_, ex) in list(zip(answers, asked))[:: max(1, len(answers) // 8)]]
        results["methods"][name] = row
        echo(f"[{probe} {name}] exact match {row['exact_match']:.3f}, contains {row['contains']:.3f}, "
             f"digits {row['digits']:.3f}"
             + (f", routed right {row['routing_accuracy']:.3f}" if "routing_accuracy" in row else ""))
    write_json(out / f"{probe}.json", results)
    (out / f"{probe}.md").write_text(multimodule_report(results))
    plot_multimodule(results, out / f"{probe}.png")
    return results


def multimodule_report(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# {results['probe'].capitalize()} probe (PhoneBook 128K sectors, scaled): {results['backbone']}",
        "",
        f"{results['sectors']} sectors x first {results['facts_per_sector']} facts = {results['questions']} questions, "
        f"strict exact match on every trained fact. Sector modules r={s['rank']} (lr {s['learning_rate']:.0e}); "
        f"big module r={s['big_rank']} (lr {s['big_learning_rate']:.0e}), the same parameter count as all sector "
        f"modules together. Retrieval (MiniLM) finds the asked fact first for {results['retrieval_top1']:.3f} of "
        "questions.",
        "",
        "| method | exact match | contains the number | digits right | routed to the right module | exact match per sector |",
        "|--------|------------:|--------------------:|-------------:|---------------------------:|------------------------|",
    ]
    for m, v in results["methods"].items():
        routed = f"{v['routing_accuracy']:.3f}" if "routing_accuracy" in v else "-"
        lines.append(f"| {m} | {v['exact_match']:.3f} | {v['contains']:.3f} | {v['digits']:.3f} | {routed} | "
                     f"{' / '.join(f'{x:.2f}' for x in v['by_sector'])} |")
    lines += ["", "| module | facts | rank | LoRA params | train s | train accuracy |",
              "|--------|------:|-----:|------------:|--------:|---------------:|"]
    for m in results["modules"]:
        lines.append(f"| {m['name']} | {m['facts']} | {m['rank']} | {m['params'] / 1e6:.2f}M | {m['train_seconds']:.0f} | "
                     f"{m['train_accuracy']:.3f} |")
    lines += ["", PAPER_FINDINGS[results["probe"]]]
    return "\n".join(lines) + "\n"


def plot_multimodule(results: dict[str, Any], path: Path) -> None:
    methods = results["methods"]
    metrics = (("exact_match", "exact match"), ("contains", "contains the number"), ("digits", "digits right"))
    grouped_bars(path, list(methods), {label: [v[metric] for v in methods.values()] for metric, label in metrics},
                 "share of the facts", f"PhoneBook, {results['sectors']} sectors x {results['facts_per_sector']} facts: "
                 f"{results['probe']}", size=(8, 3.8), ylim=(0, 1.05), rotate=True)


