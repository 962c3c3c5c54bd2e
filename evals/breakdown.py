"""Where a LoCoMo run's F1 comes from: every method on slices of the questions, with paired differences.

``breakdown`` pools the answers of one or more finished ``eval locomo`` runs. Each method on each conversation
is taken from the first run that answered it there, so a consolidated run that forced only the adapter routes can
be read beside the ``none``/``icl``/``rag`` rows of a run without consolidation on the same data (those routes
never touch a module), and consolidated runs of different conversations pool into one table of the whole file.
Only the questions of categories 1-4 that every method answered are kept, so every number in a column is over the
same questions and every difference is paired.

The slices: all of them, temporal (category 2, the dates template-trained modules answer best) and the rest
(1, 3, 4). With ``seen`` (another run's folder, e.g. the slice the router policy was fitted on) the questions
that run answered and those it did not are split the same way, so a figure on never-fitted questions is read
off directly. Per slice: each method's F1, the per-question oracle over the forced routes, and each method
minus ``baseline`` with its 95% interval. On the temporal slices, also the date score (``dates.date_score``: does
the answer's first date fall in the gold's window, at the gold's precision), over the questions whose gold names a
date: a constant year cannot earn it. With ``data`` (the LoCoMo file), ``random session date`` answers each
question "On <a date of one of the conversation's sessions>." and is scored by its expected value over them (chance
for a module that names the date of one of its own sessions), and the same date questions get the said-date score
(``dates.said_score``: does the answer's first date name the day of a session that holds the question's evidence,
when it was said rather than when it happened).
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.errors import ValidationError
from agent_memory.evals.jsonl import read_rows, same_question
from agent_memory.evals.dates import date_score, said_score
from agent_memory.evals.plots import grouped_bars
from agent_memory.evals.locomo import METHODS, Conversation, evidence_sessions, first_sessions, load_locomo, read_recipe, score
from agent_memory.evals.stats import paired_interval, rounded_mean

Key = tuple[str, int]
"""A question: (sample_id, index)."""
CHANCE = "random session date"


def _date(row: dict[str, Any], prediction: str) -> float | None:
    """The date score of ``prediction`` for ``row``'s question; None unless it is temporal with a date for its gold."""
    return date_score(prediction, row["gold"]) if row["category"] == 2 else None


def _said(row: dict[str, Any], predictions: Sequence[str], days: set[date] | None) -> float | None:
    """The mean said-date score of ``predictions`` on ``row``'s question; None unless it is a date question whose
    evidence sessions are known."""
    if row["date"] is None or not days:
        return None
    return sum(said_score(p, days) for p in predictions) / len(predictions)


def _scored(row: dict[str, Any], predictions: Sequence[str], days: set[date] | None = None) -> dict[str, Any]:
    """The F1, date and said-date scores ``predictions`` earn on ``row``'s question, each the mean over them."""
    dates = [_date(row, p) for p in predictions]
    return {"score": sum(score(p, row["gold"], row["category"]) for p in predictions) / len(predictions),
            "date": None if dates[0] is None else sum(dates) / len(dates), "said": _said(row, predictions, days)}


def _conversations(data: str | Path, runs: dict[str, Path]) -> dict[str, Conversation]:
    """The conversations of ``data`` by sample_id, each cut to the --sessions of the run that answered it (``runs``)."""
    conversations = {}
    for c in load_locomo(data):
        sessions = read_recipe(runs[c.sample_id]).get("sessions") if c.sample_id in runs else None
        conversations[c.sample_id] = first_sessions(c, sessions) if sessions else c
    return conversations


def _session_answers(conversations: dict[str, Conversation]) -> dict[str, list[str]]:
    """Per conversation, "On <day> <Month> <year>." for each of its sessions."""
    return {cid: [f"On {s.when.day} {s.when:%B %Y}." for s in c.sessions] for cid, c in conversations.items()}


def _evidence_days(conversations: dict[str, Conversation]) -> dict[Key, set[date]]:
    """Per question, the dates of the sessions its evidence lies in."""
    out = {}
    for cid, c in conversations.items():
        day = {s.number: s.when.date() for s in c.sessions}
        for q in c.questions:
            out[(cid, q.index)] = {day[n] for e in q.evidence for n in evidence_sessions(e) if n in day}
    return out


def _pooled(results: Sequence[Path]) -> tuple[dict[str, dict[Key, dict[str, Any]]], dict[str, list[str]], dict[str, Path]]:
    """method -> question -> row, each method on each conversation from the first run that answered it there; the
    runs each method came from; and per conversation, the first run that answered on it."""
    by_method: dict[str, dict[Key, dict[str, Any]]] = {}
    owner: dict[tuple[str, str], Path] = {}
    texts: dict[Key, str] = {}
    for folder in map(Path, results):
        rows = [r for r in read_rows(folder / "answers.jsonl") if r["category"] != 5]
        if not rows:
            raise ValidationError("--results", f"{folder / 'answers.jsonl'} holds no answers of categories 1-4",
                                  "pass the --out folder of an `agent-memory eval locomo` run")
        for row in rows:
            same_question(texts, row, "--results", folder)
            if owner.setdefault((row["method"], row["sample_id"]), folder) == folder:
                row["date"] = _date(row, row.get("prediction", ""))
                by_method.setdefault(row["method"], {})[(row["sample_id"], row["index"])] = row
    source: dict[str, list[str]] = {}
    runs: dict[str, Path] = {}
    for (method, sample_id), folder in owner.items():
        if str(folder) not in source.setdefault(method, []):
            source[method].append(str(folder))
        runs.setdefault(sample_id, folder)
    return by_method, source, runs


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
              constants: Sequence[str] = (), data: str | Path | None = None) -> dict[str, Any]:
    """F1 per method on each slice of the questions every pooled method answered, and each minus ``baseline``.

    Each of ``constants`` is scored as one more method that gives that answer to every question (say ``2023``: what
    a route earns on temporal questions by naming the right year, whatever it remembers); with ``data``, so is a
    random session's date. Neither is in the oracle; either may be the baseline.
    """
    if not results:
        raise ValidationError("--results", "no run given", "pass the --out folder of an `agent-memory eval locomo` run")
    by_method, source, runs = _pooled([Path(r) for r in results])
    methods = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    forced = [m for m in methods if m != "router"]
    asked = {k: r for rows in by_method.values() for k, r in rows.items()}
    pseudo = {f"constant {text!r}": ({k: [text] for k in asked}, "the same answer to every question, scored here")
              for text in constants}
    days: dict[Key, set[date]] = {}
    if data is not None:
        conversations = _conversations(data, runs)
        missing = sorted({k[0] for k in asked} - conversations.keys())
        if missing:
            raise ValidationError("--data", f"{data} holds no {', '.join(missing)}", "pass the file the runs were made on")
        dates, days = _session_answers(conversations), _evidence_days(conversations)
        pseudo[CHANCE] = ({k: dates[k[0]] for k in asked}, "each session's date as the answer, the mean over the sessions, scored here")
        for rows in by_method.values():
            for k, row in rows.items():
                row["said"] = _said(row, [row.get("prediction", "")], days.get(k))
    for name, (answers, how) in pseudo.items():
        by_method[name], source[name] = {k: _scored(asked[k], said, days.get(k)) for k, said in answers.items()}, [how]
        methods.append(name)
    if baseline not in by_method:
        raise ValidationError("--baseline", f"no run answered with {baseline!r}", f"pick one of {', '.join(sorted(by_method))}")
    shared = set.intersection(*(set(rows) for rows in by_method.values()))
    if not shared:
        raise ValidationError("--results", "no question was answered by every method",
                              "pool runs on the same conversations (see each run's --conversations)")
    slices = {}
    for name, keys in _slices({k: asked[k]["category"] for k in shared}, _seen(seen)).items():
        slices[name] = _slice(by_method, keys, methods, forced, baseline, "score")
        if name.endswith("temporal"):
            dated = [k for k in keys if asked[k]["date"] is not None]
            slices[name]["date"] = _slice(by_method, dated, methods, forced, baseline, "date")
            if data is not None:
                slices[name]["said"] = _slice(by_method, [k for k in dated if days.get(k)], methods, forced, baseline, "said")
    return {"results": [str(r) for r in results], "seen": str(seen) if seen is not None else None, "baseline": baseline,
            "source": {m: ", ".join(source[m]) for m in methods}, "conversations": sorted({k[0] for k in shared}),
            "routes": _routes(by_method.get("router", {}), shared), "slices": slices}


def _seen(seen: str | Path | None) -> set[Key] | None:
    """The questions the run in ``seen`` answered (None without one)."""
    if seen is None:
        return None
    keys = {(r["sample_id"], r["index"]) for r in read_rows(Path(seen) / "answers.jsonl")}
    if not keys:
        raise ValidationError("--seen", f"{Path(seen) / 'answers.jsonl'} holds no answers",
                              "pass the --out folder of the run whose questions count as seen")
    return keys


def _slice(by_method: dict[str, dict[Key, dict[str, Any]]], keys: list[Key], methods: list[str], forced: list[str],
           baseline: str, metric: str) -> dict[str, Any]:
    """One slice by one metric (``score``: F1, ``date``: date score, ``said``: said-date score): per method, the
    oracle, minus ``baseline``."""
    scores = {m: [by_method[m][k][metric] for k in keys] for m in methods}
    return {"questions": len(keys), "f1" if metric == "score" else "accuracy": {m: rounded_mean(scores[m]) for m in methods},
            "oracle": rounded_mean([max(by_method[m][k][metric] for m in forced) for k in keys]) if forced else None,
            "minus_baseline": {m: paired_interval([a - b for a, b in zip(scores[m], scores[baseline])])
                               for m in methods if m != baseline and keys}}


def _routes(router: dict[Key, dict[str, Any]], shared: set[Key]) -> dict[str, int]:
    """How often the router took each route on the shared questions."""
    return dict(Counter(router[key]["route"] for key in sorted(shared & router.keys())).most_common())


def breakdown_plot(table: dict[str, Any], path: Path) -> None:
    """Bars: each method's F1 on all questions, the temporal ones and the rest, then its date and said-date
    scores where the table has them."""
    every, temporal = table["slices"]["all"], table["slices"]["all temporal"]
    groups = {f"F1, all ({every['questions']})": every["f1"], f"F1, temporal ({temporal['questions']})": temporal["f1"],
              f"F1, 1,3,4 ({table['slices']['all 1,3,4']['questions']})": table["slices"]["all 1,3,4"]["f1"]}
    for metric, name in (("date", "date score"), ("said", "said-date score")):
        if temporal.get(metric, {}).get("questions"):
            groups[f"{name} ({temporal[metric]['questions']})"] = temporal[metric]["accuracy"]
    grouped_bars(path, list(groups), {m: [g[m] for g in groups.values()] for m in table["source"]},
                 "LoCoMo F1 / share right", f"LoCoMo {', '.join(table['conversations'])}", size=(11, 4.5))


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
    return "\n".join(lines + _date_report(table, methods)) + "\n"


def _date_report(table: dict[str, Any], methods: list[str]) -> list[str]:
    """The date-score tables of the temporal slices (questions whose gold names a date), each then minus the baseline."""
    titles = {"date": "Date score on temporal questions whose gold names a date (the answer's first date in the gold's "
                      "window, at its precision):",
              "said": "Said-date score on the same questions (the answer's first date is the day of a session that "
                      "holds the evidence: when it was said):"}
    lines = []
    for metric, title in titles.items():
        dated = {n: s[metric] for n, s in table["slices"].items() if s.get(metric, {}).get("questions")}
        if not dated:
            continue
        head = " | ".join(f"{n} ({d['questions']})" for n, d in dated.items())
        lines += ["", title, "", f"| method | {head} | {head.replace(' (', ' minus baseline (')} |",
                  "|---|" + "---:|" * 2 * len(dated)]
        for method in methods:
            diffs = [d["minus_baseline"].get(method) for d in dated.values()]
            lines.append(f"| {method} | " + " | ".join(f"{d['accuracy'][method]:.3f}" for d in dated.values()) + " | "
                         + " | ".join(f"{x['mean']:+.3f} +- {x['ci95']:.3f}" if x else "-" for x in diffs) + " |")
        if next(iter(dated.values()))["oracle"] is not None:
            lines.append("| per-question oracle over the forced routes | "
                         + " | ".join(f"{d['oracle']:.3f}" for d in dated.values()) + " |" + " |" * len(dated))
    return lines
