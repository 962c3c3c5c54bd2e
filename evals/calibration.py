"""Router calibration on LoCoMo: fit the routing policy on some conversations, report it on the others.

``agent-memory eval calibrate`` reads a finished ``eval locomo`` run (its ``answers.jsonl`` and the
memory homes it ingested), or several (one per consolidated conversation, each made in its own
sitting), and, for every question of categories 1-4:

* takes the router's features as the ``router`` method recorded them in its rows (runs since they
  do), or else recomputes them from that home (retrieval only; no generation), exactly as it saw
  them when it answered from the conversation's last session (the run's own ``--sessions``, ``-k``
  and trust floor, from its ``run.json``);
* takes the quality of each route from the forced-route methods of the same run (``none``, ``icl``,
  ``rag``, and ``adapter``, ``adapter+rag``, ``adapter+icl`` when they ran): the LoCoMo F1 of the
  answer that route gave.

Leave one conversation out: the policy (:class:`agent_memory.router.RulePolicy`, grid search of its
thresholds) is fitted on the other conversations and scored on the held-out one by the quality of
the routes it picks; nothing is ever scored on the conversations it was fitted on. Beside it, on the
same held-out questions: the default thresholds, the single route that was best on the fitting
conversations, the router as it actually ran, and the per-question oracle (the ceiling of any router).

A route is scored by the forced-route answer: a policy-chosen ``rag`` can keep fewer retrieved
episodes than forced ``rag`` (the relevance margin), so the simulated default differs a little
from the router's real answers; both are reported. Routes no method measured score 0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.errors import ValidationError
from agent_memory.atomic import write_json, write_text
from agent_memory.evals.jsonl import read_rows, same_question
from agent_memory.evals.stats import paired_interval, rounded_mean
from agent_memory.evals.locomo import AGENT, ROUTE_OF, first_sessions, load_locomo, read_recipe
from agent_memory.router import RouteFeatures, RulePolicy


def route_samples(data: str | Path, results: str | Path | Sequence[str | Path], k: int | None = None,
                  echo: Callable[[str], None] = print, routes_from: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per answered question (categories 1-4): conversation, features, quality per route, router's score.

    ``results`` is one finished run's ``--out`` folder or several (say, one per consolidated conversation);
    each is read with its own ``run.json`` settings (``--sessions``, ``-k``), and a conversation may be in one only.
    ``k`` overrides the runs' own (for runs made before ``run.json``; default 5 there). ``routes_from``: a run whose
    forced routes stand in for those a ``results`` run did not force (see ``_route_quality``).
    """
    folders = _folders(results)
    if not folders:
        raise ValidationError("--results", "no folder given", "pass the --out folder of a finished `agent-memory eval locomo` run")
    samples: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for folder in folders:
        recipe = read_recipe(folder)
        run_k = k or recipe.get("k") or 5
        found = _run_samples(data, folder, recipe, run_k, echo, Path(routes_from) if routes_from is not None else None)
        for conversation in sorted({s["conversation"] for s in found}):
            if conversation in seen:
                raise ValidationError("--results", f"{conversation} was answered in both {seen[conversation]} and {folder}",
                                      "pass each conversation's run once (leave one out holds out a conversation)")
            seen[conversation] = folder
        samples += found
    return samples


def _folders(results: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(results)] if isinstance(results, (str, Path)) else [Path(r) for r in results]


def _run_samples(data: str | Path, results: Path, recipe: dict[str, Any], k: int,
                 echo: Callable[[str], None], routes_from: Path | None = None) -> list[dict[str, Any]]:
    from agent_memory.config import MemoryConfig, RouterConfig
    from agent_memory.memory import AgentMemory
    from agent_memory.types import Namespace

    rows = read_rows(results / "answers.jsonl")
    if not rows:
        raise ValidationError("--results", f"{results / 'answers.jsonl'} holds no answers",
                              "pass the --out folder of a finished `agent-memory eval locomo` run")
    quality = _route_quality(rows, results, routes_from)
    router = {(r["sample_id"], r["index"]): r for r in rows if r["method"] == "router"}
    samples = []
    for conv in load_locomo(data):
        conv = first_sessions(conv, recipe["sessions"]) if recipe.get("sessions") else conv
        asked = [q for q in conv.questions if q.category != 5 and (conv.sample_id, q.index) in quality]
        home = results / "homes" / conv.sample_id
        if not asked:
            continue
        recorded = all("features" in router.get((conv.sample_id, q.index), {}) for q in asked)
        if recorded:  # the router's rows hold what it decided on: the home is not needed
            features_of = lambda q: router[(conv.sample_id, q.index)]["features"]  # noqa: E731
        elif not (home / "ingested.json").is_file():
            raise ValidationError("--results", f"{home} is missing or was not fully ingested, and the run's router rows "
                                  "do not record their features", "rerun `agent-memory eval locomo` with the same --out")
        else:
            # the run's trust floor, as its router saw the modules (the backbone is not needed: retrieval only)
            floor = RouterConfig(min_module_recall=recipe.get("min_module_recall"))
            memory = AgentMemory.open(home, config=MemoryConfig(router=floor))
            ns = Namespace(conv.sample_id, AGENT, f"s{conv.sessions[-1].number}")
            features_of = lambda q: memory.router.decide(q.question, ns, k).features.to_dict()  # noqa: E731
        for q in asked:
            ran = router.get((conv.sample_id, q.index))
            samples.append({"conversation": conv.sample_id, "index": q.index, "features": features_of(q),
                            "quality": quality[(conv.sample_id, q.index)], "router": ran and ran["score"],
                            "route_as_run": ran and ran["route"]})
        echo(f"{conv.sample_id}: features of {len(asked)} questions ({'recorded by its router' if recorded else home})")
    return samples


def _route_quality(rows: list[dict[str, Any]], results: Path, routes_from: Path | None) -> dict[tuple[str, int], dict[str, float]]:
    """Question -> route -> F1 of that route's forced answer: the run's own, and for the routes the run did not
    force, those of ``routes_from`` (a run on the same data; ``none``, ``icl`` and ``rag`` never touch a module, so
    a consolidated run that forced only the adapter routes is calibrated with them from a run without modules)."""
    forced = {r["method"] for r in rows if ROUTE_OF.get(r["method"])}
    texts = {(r["sample_id"], r["index"]): r["question"] for r in rows}
    extra: list[dict[str, Any]] = []
    if routes_from is not None:
        extra = [r for r in read_rows(routes_from / "answers.jsonl")
                 if ROUTE_OF.get(r["method"]) and r["method"] not in forced and (r["sample_id"], r["index"]) in texts]
        if not extra and {m for m, route in ROUTE_OF.items() if route} - forced:
            raise ValidationError("--routes-from", f"{routes_from} forced no route that {results} did not, on its questions",
                                  "pass the --out folder of a run on the same conversations with --methods none,icl,rag")
    for r in extra:
        same_question(texts, r, "--routes-from", routes_from)
    quality: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for r in rows + extra:
        if ROUTE_OF.get(r["method"]):
            quality[(r["sample_id"], r["index"])][ROUTE_OF[r["method"]]] = r["score"]
    return quality


def leave_one_out(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fit on all conversations but one, score on that one; every conversation held out once."""
    conversations = sorted({s["conversation"] for s in samples})
    if len(conversations) < 2:
        raise ValidationError("--results", f"only {conversations} answered", "calibrate on two or more conversations")
    pairs = [(RouteFeatures(**s["features"]), s["quality"]) for s in samples]
    folds, gains, over_run = [], [], []
    default = RulePolicy()
    for held in conversations:
        fit = [p for p, s in zip(pairs, samples) if s["conversation"] != held]
        test = [(p, s) for p, s in zip(pairs, samples) if s["conversation"] == held]
        fitted = RulePolicy().fit(fit)
        routes = sorted({r for _, q in fit for r in q})
        best_route = max(routes, key=lambda r: sum(q.get(r, 0.0) for _, q in fit))
        with_router = [s["router"] for _, s in test if s["router"] is not None]
        fitted_routes = [fitted.decide(f)[0] for (f, _), _ in test]
        on_fitted = [q.get(r, 0.0) for ((_, q), _), r in zip(test, fitted_routes)]
        on_default = [q.get(default.decide(f)[0], 0.0) for (f, q), _ in test]
        gains += [a - b for a, b in zip(on_fitted, on_default)]
        over_run += [d - s["router"] if s["router"] is not None else None for d, (_, s) in zip(on_default, test)]
        folds.append({
            "held_out": held, "questions": len(test), "fitted_on": [c for c in conversations if c != held],
            "params": fitted.params(),
            "f1_fitted": rounded_mean(on_fitted, 0.0),
            "f1_default": rounded_mean(on_default, 0.0),
            "best_fixed_route": best_route,
            "f1_best_fixed_route": rounded_mean([q.get(best_route, 0.0) for (_, q), _ in test], 0.0),
            "f1_router_as_run": rounded_mean(with_router, 0.0) if len(with_router) == len(test) else None,
            "f1_oracle": rounded_mean([max(q.values()) for (_, q), _ in test], 0.0),
            "routes_fitted": dict(Counter(fitted_routes)),
        })
    total = sum(f["questions"] for f in folds)
    pooled = {key: round(sum(f[key] * f["questions"] for f in folds) / total, 4)
              for key in ("f1_fitted", "f1_default", "f1_best_fixed_route", "f1_oracle")}
    if all(f["f1_router_as_run"] is not None for f in folds):
        pooled["f1_router_as_run"] = round(sum(f["f1_router_as_run"] * f["questions"] for f in folds) / total, 4)
    pooled["fitted_minus_default"] = paired_interval(gains)  # the same held-out questions, paired
    if None not in over_run:  # today's default rules against the router the runs answered with
        pooled["default_minus_as_run"] = paired_interval(over_run)
    return {"conversations": conversations, "questions": total, "folds": folds, "pooled": pooled}


def run_calibration(data: str | Path, results: str | Path | Sequence[str | Path], k: int | None = None,
                    out: str | Path | None = None, echo: Callable[[str], None] = print,
                    routes_from: str | Path | None = None) -> dict[str, Any]:
    """Features, leave-one-conversation-out fit, then ``calibration.json`` and ``calibration.md`` in ``out``.

    ``out`` defaults to the run's folder when there is one run; with several it must be given.
    """
    folders = _folders(results)
    if out is None and len(folders) != 1:
        raise ValidationError("--out", f"is needed with {len(folders)} --results folders",
                              "pass --out DIR for calibration.json and calibration.md")
    summary = leave_one_out(route_samples(data, folders, k, echo, routes_from))
    summary["k"] = k
    summary["runs"] = [str(f) for f in folders]
    summary["routes_from"] = str(routes_from) if routes_from is not None else None
    out = Path(out) if out is not None else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "calibration.json", summary)
    write_text(out / "calibration.md", calibration_report(summary))
    return summary


def calibration_report(summary: dict[str, Any]) -> str:
    lines = [
        f"# Router calibration (LoCoMo, leave one conversation out, {summary['questions']} questions of categories 1-4)",
        "",
        "F1 on the held-out conversation of the routes each policy picks (each route scored by its forced-route answer"
        + (f"; the routes a run did not force, from {summary['routes_from']}" if summary.get("routes_from") else "") + ").",
        "",
        "| held out | questions | fitted | default rules | best fixed route (on the fit set) | router as run | oracle | "
        "fitted thresholds | fitted picks |",
        "|----------|----------:|-------:|--------------:|----------------------------------|--------------:|-------:|"
        "-------------------|--------------|",
    ]
    for f in summary["folds"]:
        ran = "-" if f["f1_router_as_run"] is None else f"{f['f1_router_as_run']:.3f}"
        picks = ", ".join(f"{r} {n}" for r, n in sorted(f["routes_fitted"].items()))
        thresholds = ", ".join(f"{name} {value}" for name, value in f["params"].items())
        lines.append(f"| {f['held_out']} | {f['questions']} | {f['f1_fitted']:.3f} | {f['f1_default']:.3f} | "
                     f"{f['f1_best_fixed_route']:.3f} ({f['best_fixed_route']}) | {ran} | {f['f1_oracle']:.3f} | "
                     f"{thresholds} | {picks} |")
    p = summary["pooled"]
    ran = f"{p['f1_router_as_run']:.3f}" if "f1_router_as_run" in p else "-"
    lines.append(f"| **all** | {summary['questions']} | {p['f1_fitted']:.3f} | {p['f1_default']:.3f} | "
                 f"{p['f1_best_fixed_route']:.3f} | {ran} | {p['f1_oracle']:.3f} | | |")
    for key, what in (("fitted_minus_default", "Fitted minus default rules, paired over the same held-out questions"),
                      ("default_minus_as_run", "Default rules minus the router as run (its own answers, under the "
                                               "rules of its day), paired")):
        if p.get(key):
            lines += ["", f"{what}: {p[key]['mean']:+.3f} +- {p[key]['ci95']:.3f} (95% CI, n={p[key]['n']})."]
    return "\n".join(lines) + "\n"

