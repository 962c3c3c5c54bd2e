"""LoCoMo: long-horizon conversational memory, scored the way the LoCoMo authors score it.

``run_locomo`` ingests each conversation session by session with its real timestamps (one memory home
per conversation; namespace ``<sample_id>/locomo/s<N>``), consolidates after every ``consolidate_every``
sessions as the nightly job would, then asks every question once per method, from the last session:

* ``none``: the backbone alone (route ``none``);
* ``icl``: the last session's recent turns in the prompt (route ``icl``);
* ``rag``: the top-k retrieved episodes, with their dates (route ``rag``);
* ``adapter``: the modules that absorbed the retrieved episodes, question only (route ``adapter``);
* ``router``: whatever the router picks.

Scoring follows ``task_eval/evaluation.py`` of snap-research/locomo: answers are lower-cased, commas and
punctuation removed, ``a an the and`` dropped, Porter-stemmed, then token F1; category 1 (multi-hop) takes,
for each comma-separated gold part, the best F1 over the prediction's comma-separated parts, and averages;
category 3 keeps the gold up to its first ``;``; category 5 (adversarial) scores 1 when the prediction
contains "no information available" or "not mentioned". The overall F1 is over categories 1-4. Evidence
recall@k: the share of a question's ``evidence`` dia_ids among the k retrieved episodes.

Every answer is appended to ``answers.jsonl`` in the output folder as soon as it exists, and a
conversation's home is marked ingested once all its sessions (and consolidations) are in, so a killed run
continues where it stopped: finished answers are kept, and a half-ingested home goes on from its last stored
session, keeping the modules it already trained (hours of CPU on a real conversation).
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from agent_memory.errors import ValidationError
from agent_memory.atomic import write_json
from agent_memory.evals.dates import date_score
from agent_memory.evals.jsonl import append_row, read_rows, same_question
from agent_memory.evals.plots import grouped_bars
from agent_memory.evals.stats import paired_interval, rounded_mean

DEFAULT_METHODS = ("none", "icl", "rag", "adapter", "router")
METHODS = ("none", "icl", "rag", "adapter", "adapter+rag", "adapter+icl", "router")
"""Every route forced (the hybrids too, for calibrating among them), and ``router``: the policy picks."""
ROUTE_OF = {m: m for m in METHODS} | {"router": None}
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
ABSTENTIONS = ("no information available", "not mentioned")
AGENT = "locomo"
SYNTHESIZERS = ("template", "distill")


# -- the data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Turn:
    speaker: str
    dia_id: str
    text: str


@dataclass(frozen=True)
class Session:
    number: int
    when: datetime
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Question:
    index: int
    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]


_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.IGNORECASE)
_MONTHS = {m: n for n, m in enumerate(["january", "february", "march", "april", "may", "june", "july", "august",
                                         "september", "october", "november", "december"], start=1)}


def parse_locomo_time(text: str, field: str = "session_date_time") -> datetime:
    """``"1:56 pm on 8 May, 2023"`` -> an aware datetime (the data gives no zone: UTC is assumed)."""
    match = _TIME.match(text) if isinstance(text, str) else None
    month = _MONTHS.get(match.group(5).lower()) if match else None
    if not match or month is None:
        raise ValidationError(field, f"{text!r} is not a LoCoMo date", "write it like '1:56 pm on 8 May, 2023'")
    hour, minute = int(match.group(1)) % 12 + (12 if match.group(3).lower() == "pm" else 0), int(match.group(2))
    return datetime(int(match.group(6)), month, int(match.group(4)), hour, minute, tzinfo=timezone.utc)


def _need(record: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValidationError(f"{where}.{key}", "is missing", "use a file in the locomo10.json schema")
    value = record[key]
    if not isinstance(value, kind):
        raise ValidationError(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}",
                              "use a file in the locomo10.json schema")
    return value


def load_locomo(path: str | Path) -> list[Conversation]:
    """Every conversation of a file in the ``locomo10.json`` schema, checked; errors name the field."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError("data", f"{path} is not a file", "pass the LoCoMo JSON, e.g. ../shared/data/locomo/locomo_dev5.json")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError("data", f"{path} is not JSON ({exc})", "pass the LoCoMo JSON file") from None
    if not isinstance(samples, list) or not samples:
        raise ValidationError("data", "expected a non-empty list of samples", "use a file in the locomo10.json schema")
    return [_conversation(sample, n) for n, sample in enumerate(samples)]


def _conversation(sample: Any, n: int) -> Conversation:
    where = f"[{n}]"
    sample_id = _need(sample, "sample_id", str, where)
    conv = _need(sample, "conversation", dict, where)
    where = f"{sample_id}.conversation"
    speakers = (_need(conv, "speaker_a", str, where), _need(conv, "speaker_b", str, where))
    numbers = sorted(int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k))
    sessions = []
    for number in numbers:  # sessions are counted by the turn lists present (some dates have no turns)
        key = f"session_{number}"
        raw_turns = _need(conv, key, list, where)
        if not raw_turns:
            continue
        when = parse_locomo_time(_need(conv, f"{key}_date_time", str, where), f"{where}.{key}_date_time")
        turns = []
        for t, raw in enumerate(raw_turns):
            at = f"{where}.{key}[{t}]"
            text = _need(raw, "text", str, at)
            if raw.get("blip_caption"):  # a shared photo: the caption is what a text-only memory can keep
                text = f"{text} [shares a photo: {raw['blip_caption']}]".strip()
            turns.append(Turn(_need(raw, "speaker", str, at), _need(raw, "dia_id", str, at), text))
        sessions.append(Session(number, when, tuple(turns)))
    if not sessions:
        raise ValidationError(f"{where}", "holds no session with turns", "use a file in the locomo10.json schema")
    questions = []
    for q, raw in enumerate(_need(sample, "qa", list, sample_id)):
        at = f"{sample_id}.qa[{q}]"
        category = _need(raw, "category", int, at)
        if category not in CATEGORIES:
            raise ValidationError(f"{at}.category", f"{category} is not a LoCoMo category", "use 1-5")
        gold = raw.get("answer", raw.get("adversarial_answer", "")) if category == 5 else _need(raw, "answer", (str, int, float), at)
        questions.append(Question(q, _need(raw, "question", str, at), str(gold), category,
                                  tuple(str(e) for e in raw.get("evidence", []))))
    return Conversation(sample_id, speakers, tuple(sessions), tuple(questions))


def evidence_sessions(evidence: str) -> list[int]:
    """The session numbers an evidence entry names: ``D8:6``, and the file's odd ``D:11:26`` or ``D8:6; D9:17``."""
    return [int(n) for n in re.findall(r"D:?(\d+):\d+", evidence)]


def first_sessions(conv: Conversation, n: int) -> Conversation:
    """The conversation's first ``n`` sessions, and only the questions whose evidence all lies in them.

    A question with no evidence, or evidence that names no session, is dropped: nothing says it is answerable.
    """
    if n >= len(conv.sessions):
        return conv
    last = conv.sessions[n - 1].number
    kept = [q for q in conv.questions
            if q.evidence and all((found := evidence_sessions(e)) and max(found) <= last for e in q.evidence)]
    return Conversation(conv.sample_id, conv.speakers, conv.sessions[:n], tuple(kept))


# -- scoring (the LoCoMo authors' rules) -------------------------------------------------------------
def normalize_answer(text: str) -> str:
    text = text.replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return " ".join(text.split())


def _stems(text: str) -> list[str]:
    from nltk.stem import PorterStemmer

    stem = PorterStemmer().stem
    return [stem(w) for w in normalize_answer(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = _stems(prediction), _stems(gold)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, gold: str, category: int) -> float:
    """One answer's score: F1 (multi-part for category 1), abstention for category 5."""
    if category == 5:
        return float(any(phrase in prediction.lower() for phrase in ABSTENTIONS))
    if category == 3:
        gold = gold.split(";")[0].strip()
    if category == 1:
        parts = [p.strip() for p in prediction.split(",")]
        golds = [g.strip() for g in gold.split(",")]
        return sum(max(token_f1(p, g) for p in parts) for g in golds) / len(golds)
    return token_f1(prediction, gold)


def evidence_recall(retrieved: Iterable[str], evidence: Sequence[str]) -> float | None:
    """Share of the evidence dia_ids among the retrieved ones (None when a question has no evidence)."""
    if not evidence:
        return None
    found = set(retrieved)
    return sum(e in found for e in evidence) / len(evidence)


# -- running ------------------------------------------------------------------------------------------
def ingest(memory: Any, conv: Conversation, consolidate_every: int = 0, consolidation: Any = None,
           echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Add the conversation session by session (dated turns), consolidating after every ``consolidate_every``.

    Picks up a killed ingestion where it stopped: a session is written all or none (``add_many``), so a session
    already in the store is not added again; modules already trained are kept (consolidation takes only pending
    episodes), and the consolidation due at the last stored session runs if it had not.
    """
    from agent_memory.store import NewEpisode
    from agent_memory.types import Namespace

    started, last = time.perf_counter(), len(conv.sessions)
    spaces = [Namespace(conv.sample_id, AGENT, f"s{s.number}") for s in conv.sessions]
    stored = [memory.store.count(ns) for ns in spaces]
    frontier = max((n for n, have in enumerate(stored) if have), default=-1)  # the last session stored
    for n, (session, ns) in enumerate(zip(conv.sessions, spaces)):
        if stored[n] != (len(session.turns) if n <= frontier else 0):
            raise ValidationError(str(ns), f"holds {stored[n]} episodes, the session has {len(session.turns)}",
                                  "delete the conversation's folder under OUT/homes/ and run again")
    for n, (session, ns) in enumerate(zip(conv.sessions, spaces)):
        if n > frontier:
            memory.add_many([
                NewEpisode(t.text, ns, speaker=t.speaker, role="user", timestamp=session.when + timedelta(seconds=i),
                           metadata={"dia_id": t.dia_id})
                for i, t in enumerate(session.turns)
            ])
        done = n + 1
        # before the last stored session, its consolidations ran (a later session was only added after them)
        if consolidate_every and n >= frontier and (done % consolidate_every == 0 or done == last):
            result = memory.consolidate(Namespace(conv.sample_id, AGENT), consolidation)
            echo(f"  {conv.sample_id}: after session {session.number}, {len(result.modules)} module(s) absorbed "
                 f"{result.episodes_absorbed} episodes")
    trained = module_stats(memory.registry, conv.sample_id) or {"modules": 0, "episodes": 0}
    return {"turns": sum(len(s.turns) for s in conv.sessions), "sessions": last, "modules": trained["modules"],
            "absorbed": trained["episodes"], "sessions_already_stored": frontier + 1,
            "seconds": round(time.perf_counter() - started, 1)}


def answer_row(memory: Any, conv: Conversation, q: Question, method: str, k: int, max_new_tokens: int) -> dict[str, Any]:
    """Ask one question by one method, from the conversation's last session; the scored row."""
    from agent_memory.types import Namespace

    ns = Namespace(conv.sample_id, AGENT, f"s{conv.sessions[-1].number}")
    result = memory.answer(q.question, ns, k=k, route=ROUTE_OF[method], max_new_tokens=max_new_tokens)
    retrieved = [h.episode.metadata.get("dia_id") for h in result.decision.retrieved]
    row = {
        "sample_id": conv.sample_id, "method": method, "index": q.index, "category": q.category,
        "question": q.question, "gold": q.answer, "prediction": result.text, "score": score(result.text, q.answer, q.category),
        "route": result.route, "modules": result.modules, "recall_at_k": evidence_recall(retrieved, q.evidence),
        "prompt_tokens": result.prompt_tokens, "latency_ms": {s: round(v, 2) for s, v in result.latency_ms.items()},
    }
    if method == "router":  # what it decided on: `eval calibrate` refits the rules from these, without the homes
        row["features"] = result.decision.features.to_dict()
    return row


def module_stats(registry: Any, sample_id: str) -> dict[str, Any] | None:
    """What consolidation left in a conversation's home: modules, weak ones, self-test recall, training cost."""
    modules = registry.list(sample_id, AGENT)
    if not modules:
        return None
    return {
        "modules": len(modules), "weak": sum(m.weak for m in modules), "episodes": sum(len(m.episode_ids) for m in modules),
        "recall_mean": rounded_mean([m.recall for m in modules]), "examples": sum(m.examples for m in modules),
        "train_tokens": sum(m.train_tokens for m in modules), "train_seconds": round(sum(m.train_seconds for m in modules), 1),
        "rank": sorted({m.rank for m in modules}), "params_per_module": modules[0].params,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method: F1 per category, overall F1 over categories 1-4 and over 1, 3, 4 (without temporal, the questions
    template-trained modules answer best), the temporal questions' date score (``dates.date_score``, over those whose
    gold names a date: what a constant year cannot earn), adversarial accuracy, recall@k, latency, tokens, and (when ``none`` ran)
    the paired F1 difference to ``none`` over the same questions of categories 1-4."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    out = {}
    for method in [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS)):
        mine = by_method[method]
        per_cat = {CATEGORIES[c]: rounded_mean([r["score"] for r in mine if r["category"] == c]) for c in CATEGORIES}
        answered = [r for r in mine if r["category"] != 5]
        totals = sorted(sum(r["latency_ms"].values()) for r in mine)
        stages = sorted({s for r in mine for s in r["latency_ms"]})
        out[method] = {
            "questions": len(mine), "f1": rounded_mean([r["score"] for r in answered]), "by_category": per_cat,
            "f1_without_temporal": rounded_mean([r["score"] for r in answered if r["category"] != 2]),
            "temporal_date": rounded_mean([d for r in mine if r["category"] == 2
                                           and (d := date_score(r["prediction"], r["gold"])) is not None]),
            "f1_by_conversation": {sid: rounded_mean([r["score"] for r in answered if r["sample_id"] == sid])
                                   for sid in sorted({r["sample_id"] for r in answered})},
            "recall_at_k": rounded_mean([r["recall_at_k"] for r in mine if r["recall_at_k"] is not None]),
            "prompt_tokens": rounded_mean([r["prompt_tokens"] for r in mine]),
            "latency_ms_p50": totals[len(totals) // 2] if totals else None,
            "stage_ms_mean": {s: rounded_mean([r["latency_ms"].get(s, 0.0) for r in mine]) for s in stages},
            "routes": dict(Counter(r["route"] for r in mine)),
        }
    base = {(r["sample_id"], r["index"]): r["score"] for r in by_method.get("none", []) if r["category"] != 5}
    for method in out:
        paired = [r["score"] - base[key] for r in by_method[method] if (key := (r["sample_id"], r["index"])) in base]
        if method != "none" and paired:
            out[method]["f1_vs_none"] = paired_interval(paired)
    return out


def run_locomo(data: str | Path, out: str | Path, *, conversations: Sequence[str] | None = None,
               methods: Sequence[str] = DEFAULT_METHODS, limit: int | None = None, k: int = 5, consolidate_every: int = 0,
               max_new_tokens: int = 32, memory_config: Any = None, consolidation: Any = None,
               sessions: int | None = None, synthesizer: str = "template",
               progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole eval: ingest, consolidate, answer, score; resumable through ``out``. Returns the summary.

    ``sessions`` keeps each conversation's first N sessions and the questions answerable from them
    (``first_sessions``); ``synthesizer`` picks consolidation's training QA: ``template`` (the product's
    default) or ``distill`` (the backbone reading each turn teaches the module, ``DistillingSynthesizer``).
    ``out`` remembers the settings that shape the answers (``run.json``); resuming with others is refused.
    """
    from tqdm.auto import tqdm

    from agent_memory.memory import AgentMemory
    from agent_memory.registry import AdapterRegistry

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValidationError("methods", f"{unknown or 'none given'} not among {', '.join(METHODS)}", "pick from those")
    if limit is not None and limit < 1:
        raise ValidationError("limit", f"{limit} is not a positive number of questions", "pass --limit 1 or more")
    if sessions is not None and sessions < 1:
        raise ValidationError("sessions", f"{sessions} is not a positive number of sessions", "pass --sessions 1 or more")
    if synthesizer not in SYNTHESIZERS:
        raise ValidationError("synthesizer", f"{synthesizer!r} is not one of {', '.join(SYNTHESIZERS)}", "pick one of those")
    convs = load_locomo(data)
    if conversations:
        known = {c.sample_id for c in convs}
        missing = [c for c in conversations if c not in known]
        if missing:
            raise ValidationError("conversations", f"{missing} not in {Path(data).name}", f"pick from {sorted(known)}")
        convs = [c for c in convs if c.sample_id in set(conversations)]
    if sessions:
        convs = [first_sessions(c, sessions) for c in convs]
    out = Path(out)
    recipe = _recipe(data, k, max_new_tokens, sessions, consolidate_every, consolidation, synthesizer, memory_config)
    _claim(out, recipe)
    answers = out / "answers.jsonl"
    rows = read_rows(answers)
    done = {(r["sample_id"], r["method"], r["index"]) for r in rows}
    ingestion: dict[str, Any] = {}
    for conv in convs:
        questions = conv.questions[:limit] if limit else conv.questions
        todo = [(q, m) for q in questions for m in methods if (conv.sample_id, m, q.index) not in done]
        home = out / "homes" / conv.sample_id
        marker = home / "ingested.json"
        if todo and not marker.exists():
            memory = AgentMemory.open(home, config=memory_config)
            if synthesizer == "distill":
                from agent_memory.consolidation import DistillingSynthesizer

                memory.synthesizer = DistillingSynthesizer(memory.backbone)
            echo(f"{conv.sample_id}: ingesting {len(conv.sessions)} sessions")
            stats = ingest(memory, conv, consolidate_every, consolidation, echo)
            if getattr(memory.synthesizer, "stats", None):
                stats["synthesizer_stats"] = dict(memory.synthesizer.stats)
            write_json(marker, stats)  # atomic: a torn marker would block every resume
        if marker.exists():
            trained = module_stats(AdapterRegistry(home / "modules"), conv.sample_id)
            ingestion[conv.sample_id] = json.loads(marker.read_text()) | {"module_stats": trained}
        if not todo:
            continue
        memory = AgentMemory.open(home, config=memory_config)
        for q, method in tqdm(todo, desc=conv.sample_id, disable=not progress):
            row = answer_row(memory, conv, q, method, k, max_new_tokens)
            append_row(answers, row)
            rows.append(row)
    wanted = {(c.sample_id, q.index) for c in convs for q in (c.questions[:limit] if limit else c.questions)}
    rows = [r for r in rows if (r["sample_id"], r["index"]) in wanted and r["method"] in methods]
    summary = {"conversations": [c.sample_id for c in convs], "methods": list(methods), "limit": limit} | recipe | {
        "ingestion": ingestion, "results": summarize(rows)}
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report(summary))
    plot(summary, out / "f1_by_category.png")
    return summary


def compare_runs(first: str | Path, second: str | Path, categories: Sequence[int] = (1, 2, 3, 4)) -> dict[str, Any]:
    """Two finished runs, question by question: per method both ran, F1 of each over the questions both
    answered (of ``categories``) and the paired difference second minus first with its 95% interval.

    The settings that differ between the two ``run.json`` recipes are listed, so the table says what was
    changed. Questions are paired by conversation and index and must be the same text in both runs.
    """
    wrong = [c for c in categories if c not in CATEGORIES]
    if wrong or not categories:
        raise ValidationError("--categories", f"{wrong or 'none'} are not LoCoMo categories", "pick from 1,2,3,4,5")
    runs = {}
    for option, folder in (("--first", Path(first)), ("--second", Path(second))):
        rows = read_rows(folder / "answers.jsonl")
        if not rows:
            raise ValidationError(option, f"{folder / 'answers.jsonl'} holds no answers",
                                  "pass the --out folder of an `agent-memory eval locomo` run")
        recipe = _flat(read_recipe(folder))
        runs[option] = ({(r["method"], r["sample_id"], r["index"]): r for r in rows if r["category"] in categories}, recipe)
    (a, recipe_a), (b, recipe_b) = runs["--first"], runs["--second"]
    methods = {m for m, _, _ in a} & {m for m, _, _ in b}
    if not methods:
        raise ValidationError("--second", "the two runs share no method on these categories",
                              "compare runs that answered with the same --methods")
    result: dict[str, Any] = {
        "first": str(first), "second": str(second), "categories": list(categories),
        "changed": {key: {"first": recipe_a.get(key), "second": recipe_b.get(key)}
                    for key in sorted(recipe_a.keys() | recipe_b.keys()) if recipe_a.get(key) != recipe_b.get(key)},
        "methods": {}}
    texts: dict[tuple[str, int], str] = {}
    for method in [m for m in METHODS if m in methods] + sorted(methods - set(METHODS)):
        keys = sorted(key for key in a.keys() & b.keys() if key[0] == method)
        for key in keys:
            same_question(texts, a[key], "--first", first)
            same_question(texts, b[key], "--second", second)
        if keys:
            result["methods"][method] = {
                "questions": len(keys), "first": rounded_mean([a[k]["score"] for k in keys]),
                "second": rounded_mean([b[k]["score"] for k in keys]),
                "second_minus_first": paired_interval([b[k]["score"] - a[k]["score"] for k in keys])}
    return result


def _flat(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (``consolidation.lora.rank``), so a comparison names just the one that changed."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def comparison_report(comparison: dict[str, Any]) -> str:
    """The comparison as a markdown table, a row per method, with the settings that changed."""
    cats = ", ".join(CATEGORIES[c] for c in comparison["categories"])
    lines = [f"# {comparison['second']} vs {comparison['first']}", "", f"F1 over {cats}, paired by question.", ""]
    lines += [f"- {key}: {v['first']!r} -> {v['second']!r}" for key, v in comparison["changed"].items()] or ["- same recipe"]
    lines += ["", "| method | questions | first F1 | second F1 | second - first (95% CI) |", "|---|---:|---:|---:|---:|"]
    for method, r in comparison["methods"].items():
        d = r["second_minus_first"]
        lines.append(f"| {method} | {r['questions']} | {r['first']:.3f} | {r['second']:.3f} | {d['mean']:+.3f} +- {d['ci95']:.3f} |")
    return "\n".join(lines) + "\n"


def _recipe(data: str | Path, k: int, max_new_tokens: int, sessions: int | None, consolidate_every: int,
            consolidation: Any, synthesizer: str, memory_config: Any) -> dict[str, Any]:
    """The settings that shape the answers (the training ones only when the run consolidates), as JSON values."""
    from dataclasses import asdict

    backbone = memory_config.backbone.model if memory_config is not None else None
    floor = memory_config.router.min_module_recall if memory_config is not None else None
    recipe: dict[str, Any] = {"data": Path(data).name, "k": k, "max_new_tokens": max_new_tokens, "sessions": sessions,
                              "consolidate_every": consolidate_every, "backbone": backbone}
    if floor is not None:  # recorded only when set, so the runs made before the option still resume
        recipe["min_module_recall"] = floor
    if consolidate_every:
        recipe |= {"synthesizer": synthesizer, "consolidation": asdict(consolidation) if consolidation is not None else None}
    return json.loads(json.dumps(recipe))


def read_recipe(out: str | Path) -> dict[str, Any]:
    """The settings a run in ``out`` was made with (its ``run.json``); {} for a run made before it existed."""
    made = Path(out) / "run.json"
    if not made.is_file():
        return {}
    try:
        recipe = json.loads(made.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError("run.json", f"{made} is not JSON ({exc})",
                              "restore it from git, or start the run again in a new --out") from exc
    if not isinstance(recipe, dict):
        raise ValidationError("run.json", f"{made} holds {type(recipe).__name__}, not the run's settings",
                              "restore it from git, or start the run again in a new --out")
    return recipe


def _claim(out: Path, recipe: dict[str, Any]) -> None:
    """Create ``out`` for this recipe, or check that the run it holds was made with the same one."""
    made = out / "run.json"
    if made.is_file():
        before = read_recipe(out)
        changed = sorted(key for key in recipe.keys() | before.keys() if before.get(key) != recipe.get(key))
        if changed:
            was = ", ".join(f"{key}={before.get(key)!r}" for key in changed)
            now = ", ".join(f"{key}={recipe.get(key)!r}" for key in changed)
            raise ValidationError("out", f"{out} holds a run made with {was}; this one asks {now}",
                                  "pass the same settings to resume it, or a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(made, recipe)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bars: F1 per category (adversarial: abstention accuracy), a group per method."""
    cats = [CATEGORIES[c] for c in (1, 2, 3, 4, 5)]
    grouped_bars(path, cats, {m: [r["by_category"][c] or 0.0 for c in cats] for m, r in summary["results"].items()},
                 "LoCoMo F1 (adversarial: abstained)", f"LoCoMo {', '.join(summary['conversations'])}")


def _module_recipe(consolidation: dict[str, Any]) -> str:
    lora = consolidation["lora"]
    return (f"r={lora['rank']} modules of at most {lora['rank'] * consolidation['answer_tokens_per_rank']} answer tokens, "
            f"{lora['max_epochs']} epochs at most")


def report(summary: dict[str, Any]) -> str:
    """The summary as a markdown table, a row per method."""
    cats = [CATEGORIES[c] for c in (1, 2, 3, 4)]
    lines = [f"# LoCoMo on {summary['data']} ({', '.join(summary['conversations'])})", "",
             f"k={summary['k']}, consolidation "
             f"{'after every %d session(s)' % summary['consolidate_every'] if summary['consolidate_every'] else 'never'}, "
             f"limit {summary['limit'] or 'none'}, max {summary['max_new_tokens']} new tokens"
             + (f", first {summary['sessions']} sessions" if summary.get("sessions") else "")
             + (f", modules trusted from self-test recall {summary['min_module_recall']}"
                if summary.get("min_module_recall") is not None else "")
             + (f", {summary['synthesizer']} QA, {_module_recipe(summary['consolidation'])}" if summary.get("consolidation") else ""), "",
             "| method | questions | F1 (1-4) | vs none (95% CI) | F1 (1,3,4) | " + " | ".join(cats)
             + " | temporal by date | adversarial | recall@k | prompt tokens | p50 ms |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(cats) + 5)]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for method, r in summary["results"].items():
        vs = f"{r['f1_vs_none']['mean']:+.3f} +- {r['f1_vs_none']['ci95']:.3f}" if "f1_vs_none" in r else "-"
        lines.append(f"| {method} | {r['questions']} | {fmt(r['f1'])} | {vs} | {fmt(r.get('f1_without_temporal'))} | "
                     + " | ".join(fmt(r['by_category'][c]) for c in cats)
                     + f" | {fmt(r.get('temporal_date'))} | {fmt(r['by_category']['adversarial'])} | {fmt(r['recall_at_k'])} | "
                     f"{r['prompt_tokens'] or 0:.0f} | {r['latency_ms_p50'] or 0:.0f} |")
    trained = {sid: i["module_stats"] for sid, i in summary.get("ingestion", {}).items() if i.get("module_stats")}
    if trained:
        lines += ["", "| conversation | modules | weak | episodes absorbed | self-test recall | QA examples | train tokens | train s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {sid} | {m['modules']} | {m['weak']} | {m['episodes']} | {fmt(m['recall_mean'])} | {m['examples']} | "
                  f"{m['train_tokens']} | {m['train_seconds']:.0f} |" for sid, m in trained.items()]
    return "\n".join(lines) + "\n"
