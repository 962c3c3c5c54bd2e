"""The seed paper's internalization probe on PaperQA: which training data makes a module answer about a document?

Each of the 15 paper introductions becomes one module (its sentences are the episodes); the
module is then asked the paper's 30 questions (levels 1-3) with nothing but the question in
the prompt. Methods:

* ``none``: the backbone alone (floor);
* ``context``: the backbone with the whole introduction in its prompt (what retrieval could give);
* ``raw``: a module trained on the raw text (next-token loss over ~3-sentence chunks);
* ``qa``: a module trained on the product's template QA ("What did the paper say about MCTS?" -> the sentence);
* ``qa+summary+rewrite``: the same QA plus the templates' summary ("What did the paper talk about on ...?" -> the
  introduction's opening words) and rewrite ("What do you remember about MCTS?" -> "On <date> the paper said: ...")
  examples, the offline counterpart of the paper's richest recipe (QA + summaries + rewrites);
* ``distill``: the same questions, answered and taught by the backbone reading the sentence and its
  neighbours (context distillation, ``consolidation.distill``);
* ``rag``: no module, the ``RAG_K`` sentences nearest the question (MiniLM) in the prompt;
* ``distill+rag``: the distilled module and those sentences together (the paper's hybrid probe,
  ``agent-memory eval paper --probe hybrid``, reports none / context / rag / distill / distill+rag).

Methods that share a module (``distill``, ``distill+rag``) share one training run per paper.

The paper judged answers with GPT-4.1; offline we score token F1 and ROUGE-L (LCS F-measure) against
the gold answer. One JSON line per (paper, method) is appended to ``internalization.jsonl`` as soon
as it is done, so a killed run resumes; ``internalization.md`` / ``.json`` / ``.png`` summarise.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig
from agent_memory.errors import ValidationError
from agent_memory.types import Episode, Namespace

from agent_memory.consolidation.consolidator import normalize, token_f1
from agent_memory.consolidation.distill import DistillingSynthesizer
from agent_memory.consolidation.synthesis import Synthesizer, TemplateSynthesizer
from agent_memory.consolidation.trainer import LoraSettings, QAExample, teacher_prompt, train_lora
from agent_memory.atomic import write_json
from agent_memory.evals.jsonl import append_row, read_rows
from agent_memory.evals.plots import grouped_bars
from agent_memory.evals.stats import paired_interval, rounded_mean

METHODS = ("none", "context", "raw", "qa", "qa+summary+rewrite", "distill", "rag", "distill+rag")
PROBE_METHODS = {"internalization": ("none", "context", "raw", "qa", "qa+summary+rewrite", "distill"),
                 "hybrid": ("none", "context", "rag", "distill", "distill+rag")}
PAPER_FINDINGS = {
    "internalization": "Paper (Llama-3.1-8B, judged by GPT-4.1): a module trained on the raw introduction answers "
                       "little; synthesized QA pairs internalize far better, and QA plus summaries and rewrites best.",
    "hybrid": "Paper: adapter memory and retrieval are complementary; the module plus retrieved context beats "
              "either alone.",
}
COMPARISONS = {"hybrid": (("distill+rag", "rag"), ("distill+rag", "distill"))}
"""Paired differences a probe reports beside each method's difference to ``none``."""
RAG_K = 3
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def load_paperqa(data_dir: str | Path) -> list[dict[str, Any]]:
    """``paperQA.json``, checked: each paper needs an ``introduction`` and ``QA`` items with level/question/answer."""
    path = Path(data_dir) / "paperQA.json"
    if not path.is_file():
        raise ValidationError("--data", f"{path} does not exist", "pass the lora_memory_paper folder")
    papers = json.loads(path.read_text())
    if not isinstance(papers, list) or not papers:
        raise ValidationError("paperQA.json", "is not a non-empty list of papers", "use the file released with the paper")
    for n, paper in enumerate(papers):
        if not isinstance(paper, dict) or not str(paper.get("introduction") or "").strip():
            raise ValidationError(f"paperQA.json[{n}].introduction", "is missing or empty", "give each paper its text")
        for m, qa in enumerate(paper.get("QA") or [None]):
            for key in ("level", "question", "answer"):
                if not isinstance(qa, dict) or qa.get(key) in (None, ""):
                    raise ValidationError(f"paperQA.json[{n}].QA[{m}].{key}", "is missing", "give every QA item "
                                          "level, question and answer")
    return papers


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure (beta 1) over normalized tokens."""
    a, b = normalize(prediction).split(), normalize(gold).split()
    if not a or not b:
        return float(a == b)
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    lcs = row[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def paper_episodes(paper: dict[str, Any], index: int) -> list[Episode]:
    """The introduction's sentences as episodes spoken by "the paper" (the templates ask "What did the paper say ...")."""
    ns = Namespace("paperqa", "probe", f"paper{index}")
    when = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return [Episode(id=f"p{index}-s{n}", text=s, namespace=ns, timestamp=when, speaker="the paper")
            for n, s in enumerate(sentences(paper["introduction"]))]


def raw_chunks(paper: dict[str, Any], per_chunk: int = 3) -> list[QAExample]:
    """The introduction as raw-text examples (empty question), a few sentences each."""
    s = sentences(paper["introduction"])
    return [QAExample("", " ".join(s[i : i + per_chunk]), None, "text") for i in range(0, len(s), per_chunk)]


class KindFilter:
    """Only the ``kinds`` of another synthesizer's examples (the probe trains on keyword QA alone)."""

    def __init__(self, base: Synthesizer, kinds: Sequence[str]) -> None:
        self.base, self.kinds = base, set(kinds)

    def prepare(self, episodes: Sequence[Episode]) -> None:
        self.base.prepare(episodes)

    def synthesize(self, episodes: Sequence[Episode]) -> list[QAExample]:
        return [ex for ex in self.base.synthesize(episodes) if ex.kind in self.kinds]

    def probes(self, episodes: Sequence[Episode]) -> list[QAExample]:
        return self.base.probes(episodes)


def neighbourhood(episodes: Sequence[Episode], width: int = 2) -> Callable[[Episode], str]:
    """Teacher context for a sentence: it and ``width`` sentences either side."""
    at = {e.id: n for n, e in enumerate(episodes)}
    return lambda e: " ".join(x.text for x in episodes[max(0, at[e.id] - width) : at[e.id] + width + 1])


def training_examples(backbone: Backbone, paper: dict[str, Any], index: int, method: str) -> list[QAExample]:
    episodes = paper_episodes(paper, index)
    keyword_qa = KindFilter(TemplateSynthesizer(negatives_per_module=0), ["qa"])
    if method == "raw":
        return raw_chunks(paper)
    if method == "qa":
        return keyword_qa.synthesize(episodes)
    if method == "qa+summary+rewrite":
        return KindFilter(TemplateSynthesizer(negatives_per_module=0), ["qa", "summary", "rewrite"]).synthesize(episodes)
    synthesizer = DistillingSynthesizer(backbone, keyword_qa, context=neighbourhood(episodes))
    synthesizer.prepare(episodes)
    return synthesizer.synthesize(episodes)


def module_kind(method: str) -> str | None:
    """The training data of a method's module (None: the method uses no module)."""
    return {"raw": "raw", "qa": "qa", "qa+summary+rewrite": "qa+summary+rewrite", "distill": "distill",
            "distill+rag": "distill"}.get(method)


class SentenceRetriever:
    """The ``k`` sentences of one introduction nearest a question, in the paper's order."""

    def __init__(self, embedder, texts: Sequence[str], k: int = RAG_K) -> None:
        import numpy as np

        self.embedder, self.texts, self.k = embedder, list(texts), k
        self.matrix = np.asarray(embedder.embed(self.texts), dtype=np.float32)

    def __call__(self, question: str) -> str:
        import numpy as np

        scores = self.matrix @ np.asarray(self.embedder.embed([question])[0], dtype=np.float32)
        return " ".join(self.texts[i] for i in sorted(np.argsort(-scores)[: self.k].tolist()))


def run_methods(backbone: Backbone, paper: dict[str, Any], index: int, kind: str | None, methods: Sequence[str],
                settings: LoraSettings, retrieve: Callable[[str], str] | None = None,
                max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """The cells of one paper whose methods share the module ``kind`` (None: no module): train it once, answer and
    score each."""
    train, peft_model = None, None
    if kind:
        examples = training_examples(backbone, paper, index, kind)
        peft_model, report = train_lora(backbone, examples, settings, "default")
        train = {"examples": len(examples), **report.to_dict()}
        train.pop("history")
    rows = []
    try:
        for method in methods:
            contexts = [paper["introduction"] if method == "context" else retrieve(q["question"]) if method.endswith("rag")
                        else None for q in paper["QA"]]
            prompts = [backbone.qa_prompt(q["question"]) if c is None else teacher_prompt(backbone, c, q["question"])
                       for q, c in zip(paper["QA"], contexts)]
            answers = backbone.complete(prompts, max_new_tokens=max_new_tokens)
            rows.append(scored_row(paper, index, method, train, answers))
    finally:
        if peft_model is not None:
            backbone.model = peft_model.unload()
    return rows


def scored_row(paper: dict[str, Any], index: int, method: str, train: dict[str, Any] | None,
               answers: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"paper": index, "title": paper.get("title", ""), "method": method, "train": train}
    row["answers"] = [{"level": q["level"], "question": q["question"], "gold": str(q["answer"]), "answer": a,
                       "f1": round(token_f1(a, str(q["answer"])), 4), "rouge_l": round(rouge_l(a, str(q["answer"])), 4)}
                      for q, a in zip(paper["QA"], answers)]
    for metric in ("f1", "rouge_l"):
        row[metric] = round(sum(a[metric] for a in row["answers"]) / len(row["answers"]), 4)
    return row


def run_internalization_probe(
    data_dir: str | Path,
    out: str | Path,
    papers: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    settings: LoraSettings | None = None,
    backbone_config: BackboneConfig | None = None,
    echo: Callable[[str], None] = print,
    probe: str = "internalization",
) -> dict[str, Any]:
    """Run (or resume) every (paper, method) cell into ``out``; returns the summary.

    Both PaperQA probes share one result log (``internalization.jsonl``), so a cell either ran
    is reused by the other; ``probe`` names the report (``internalization`` or ``hybrid``) and
    its default methods.
    """
    if probe not in PROBE_METHODS:
        raise ValidationError("--probe", f"{probe!r} is not a PaperQA probe", f"use {' or '.join(PROBE_METHODS)}")
    methods = list(methods or PROBE_METHODS[probe])
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValidationError("--methods", f"unknown {', '.join(bad)}", f"use some of: {', '.join(METHODS)}")
    data = load_paperqa(data_dir)
    papers = list(range(len(data))) if papers is None else list(papers)
    outside = [p for p in papers if not 0 <= p < len(data)]
    if outside:
        raise ValidationError("--papers", f"{outside} not in 0..{len(data) - 1}", "pass indexes of paperQA.json")
    settings = settings or LoraSettings(max_epochs=12)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "internalization.jsonl"
    rows = read_rows(log)
    done = {(r["paper"], r["method"]) for r in rows}
    backbone, embedder = None, None
    for index in papers:
        pending = [m for m in methods if (index, m) not in done]
        for kind in dict.fromkeys(module_kind(m) for m in pending):
            backbone = backbone or Backbone.load(backbone_config or BackboneConfig())
            group = [m for m in pending if module_kind(m) == kind]
            retrieve = None
            if any(m.endswith("rag") for m in group):
                from agent_memory.embedder import OnnxEmbedder

                embedder = embedder or OnnxEmbedder.bundled()
                retrieve = SentenceRetriever(embedder, [e.text for e in paper_episodes(data[index], index)])
            for row in run_methods(backbone, data[index], index, kind, group, settings, retrieve):
                row["backbone"] = backbone.name
                append_row(log, row)
                rows.append(row)
                trained = (f", trained {row['train']['seconds']:.0f} s on {row['train']['examples']} examples"
                           if row["train"] else "")
                echo(f"[paper {index} {row['method']}] F1 {row['f1']:.3f} ROUGE-L {row['rouge_l']:.3f}{trained}")
    chosen = sorted((r for r in rows if r["paper"] in papers and r["method"] in methods),
                    key=lambda r: methods.index(r["method"]))
    summary = summarize(chosen, settings)
    summary["probe"] = probe
    summary["paired"] = {f"{a} - {b}": paired_difference(chosen, a, b, summary["papers"])
                         for a, b in COMPARISONS.get(probe, ()) if {a, b} <= set(summary["methods"])}
    write_json(out / f"{probe}.json", summary)
    (out / f"{probe}.md").write_text(internalization_report(summary))
    plot_internalization(summary, out / f"{probe}.png")
    return summary


def summarize(rows: list[dict[str, Any]], settings: LoraSettings) -> dict[str, Any]:
    """Mean F1 / ROUGE-L per method, overall and per question level, over the papers every method finished."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    papers = sorted(set.intersection(*({r["paper"] for r in rows if r["method"] == m} for m in methods))) if rows else []
    table: dict[str, Any] = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m and r["paper"] in papers]
        answers = [a for r in mine for a in r["answers"]]
        levels = sorted({a["level"] for a in answers})
        trained = [r["train"] for r in mine if r["train"]]
        table[m] = {
            "f1": rounded_mean([a["f1"] for a in answers], 0.0), "rouge_l": rounded_mean([a["rouge_l"] for a in answers], 0.0),
            "by_level": {str(lv): {k: rounded_mean([a[k] for a in answers if a["level"] == lv], 0.0) for k in ("f1", "rouge_l")}
                         for lv in levels},
            "train_seconds": rounded_mean([t["seconds"] for t in trained], 0.0) if trained else None,
            "examples": rounded_mean([t["examples"] for t in trained], 0.0) if trained else None,
        }
    for m in methods:
        table[m]["by_paper"] = {str(r["paper"]): r["f1"] for r in rows if r["method"] == m and r["paper"] in papers}
        if m != "none" and "none" in table:
            table[m]["f1_vs_none"] = paired_difference(rows, m, "none", papers)
    return {"papers": papers, "questions": sum(len(r["answers"]) for r in rows if r["paper"] in papers) // max(1, len(methods)),
            "backbone": rows[0].get("backbone", "") if rows else "", "settings": {"rank": settings.rank,
            "alpha": settings.alpha, "learning_rate": settings.peak_learning_rate, "max_epochs": settings.max_epochs},
            "methods": table}


def paired_difference(rows: list[dict[str, Any]], method: str, base: str, papers: Sequence[int]) -> dict[str, float]:
    """Mean F1 of ``method`` minus ``base`` over the same questions, with a normal 95% interval."""
    answers = {(r["paper"], r["method"]): r["answers"] for r in rows if r["paper"] in papers}
    return paired_interval([a["f1"] - b["f1"] for p in papers for a, b in zip(answers[(p, method)], answers[(p, base)])])


def internalization_report(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    lines = [
        f"# {summary.get('probe', 'internalization').capitalize()} probe (PaperQA): {summary['backbone']}, "
        f"papers {summary['papers']}, "
        f"{summary['questions']} questions per method",
        "",
        f"Modules: r={s['rank']}, alpha={s['alpha']}, lr {s['learning_rate']}, at most {s['max_epochs']} epochs. "
        "Scores: token F1 and ROUGE-L against the gold answers, 0-1.",
        "",
        "| method | F1 | F1 vs none (95% CI) | ROUGE-L | F1 level 1 | F1 level 2 | F1 level 3 | examples | train s |",
        "|--------|---:|--------------------:|--------:|-----------:|-----------:|-----------:|---------:|--------:|",
    ]
    for m, v in summary["methods"].items():
        lv = [v["by_level"].get(str(n), {}).get("f1") for n in (1, 2, 3)]
        d = v.get("f1_vs_none")
        vs = f"{d['mean']:+.3f} +- {d['ci95']:.3f}" if d else "-"
        levels = " | ".join("-" if x is None else f"{x:.3f}" for x in lv)
        lines.append(f"| {m} | {v['f1']:.3f} | {vs} | {v['rouge_l']:.3f} | {levels}"
                     + f" | {'-' if v['examples'] is None else round(v['examples'])} | "
                     f"{'-' if v['train_seconds'] is None else round(v['train_seconds'])} |")
    papers = summary["papers"]
    lines += ["", "F1 per paper:", "", "| method | " + " | ".join(f"paper {p}" for p in papers) + " |",
              "|---" * (len(papers) + 1) + "|"]
    for m, v in summary["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v['by_paper'][str(p)]:.3f}" for p in papers) + " |")
    if summary.get("paired"):
        lines += ["", "Paired F1 differences over the same questions (95% CI):", ""]
        lines += [f"- {name}: {d['mean']:+.3f} +- {d['ci95']:.3f} (n={d['n']})" for name, d in summary["paired"].items()]
    lines += ["", PAPER_FINDINGS[summary.get("probe", "internalization")]]
    return "\n".join(lines) + "\n"


def plot_internalization(summary: dict[str, Any], path: Path) -> None:
    methods = summary["methods"]
    grouped_bars(path, list(methods), {label: [v[metric] for v in methods.values()]
                                       for metric, label in (("f1", "token F1"), ("rouge_l", "ROUGE-L"))},
                 "score vs gold answer", f"PaperQA {summary.get('probe', 'internalization')}, {len(summary['papers'])} papers",
                 size=(6, 3.5))

