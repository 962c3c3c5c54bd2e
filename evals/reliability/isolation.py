"""Tenant isolation at scale: no path ever returns, changes or activates another namespace's memory.

Ten namespaces (six users, some with several agents and sessions, two users whose ids differ
only in a character a Chroma collection name cannot hold), the same sentences written verbatim
into every one of them so that a leak would rank as high as the caller's own episodes, and
real peft modules per user/agent in the registry. Then seeded random queries, each through one
public path (``EpisodicStore`` search / list / count / pending / get / history / update / delete
/ mark_absorbed, ``AgentMemory.search``, the router's decision for every route including forced
adapters, full answers with the activated modules recorded, the CLI's ``search --json``,
``list --json`` and ``get``, and the integrations: LangChain's retriever and chat model, LangGraph's
store searching each user's notes, bound and unbound), with random filters (``$eq $ne $gt $gte $lt $lte $in $nin``,
several fields and several operators per field; ``$and``/``$or`` are not supported and must be
refused), time ranges and k values. Every item a call returns is checked against a ground truth
kept beside the store: its namespace must lie inside the query's (else *leaked*), and results
must match the filter exactly (else *wrong*: a silently dropped filter shows up here).

Then the failures users report in other memory layers: deleting one user must leave every
other user's data unchanged; filters that cannot be honoured must raise; adding the same text
twice (or in a batch, or in another namespace) must never delete or overwrite the original.
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.errors import AgentMemoryError, NotFoundError
from agent_memory.evals.reliability.backends import MODES, capped, machine, open_home, server_url
from agent_memory.evals.reliability.tenants import (
    GHOSTS, NAMESPACES, Tally, World, cli_call, expected_ids, pick_id, pick_scope, query_text, random_filter,
    random_range, seed_episodes,
)
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace

ROUTES = (None, "none", "icl", "rag", "adapter", "adapter+rag", "adapter+icl")
WEIGHTS = {"search": 20, "list": 12, "count": 4, "pending": 4, "get": 8, "history": 4, "update": 4, "delete": 2,
           "mark_absorbed": 2, "memory.search": 10, "router": 14, "answer": 2, "cli.search": 3, "cli.list": 2,
           "cli.get": 2, "langchain.retriever": 4, "langchain.chat": 2, "langgraph.search": 4}
UNHONOURABLE = [
    {"$or": [{"topic": "travel"}, {"topic": "food"}]}, {"$and": [{"topic": "travel"}, {"n": 3}]},
    {"user_id": "bob"}, {"agent_id": "coder"}, {"session_id": "s1"}, {"ts": {"$gt": 0}}, {"absorbed_by": ""},
    {"episode_id": "ep_0"}, {"version": 1}, {"topic": {"$regex": "tr.*"}}, {"topic": {"$contains": "tra"}},
    {"topic": {"$like": "tr%"}}, {"topic": {"$not": "travel"}}, {"topic": {}}, {"n": {"$gt": "3"}},
    {"n": {"$gt": True}}, {"n": {"$in": []}}, {"n": {"$in": "abc"}}, {"topic": ["travel", "food"]},
    {"topic": None}, {"topic": {"$eq": {"nested": 1}}}, {"topic": {"$eq": [1]}}, {"n": {"$in": [1, "one"]}},
    {"n": {"$in": [1, 2.5]}}, {"": "x"}, {1: "x"}, {"$where": "1"}, "topic=travel", [("topic", "travel")],
]
BAD_TIMES = [("since", datetime(2024, 1, 5)), ("until", "last tuesday"), ("since", 1704067200)]


def check_isolation(memory, *, queries: int = 1000, seed: int = 0, cli_args: list[str] | None = None,
                    modules: int = 2, per_namespace: int = 30, echo: Callable[[str], None] | None = print,
                    ) -> dict[str, Any]:
    """Run the whole isolation check on one AgentMemory (any store); figures and violations, nothing asserted.

    ``cli_args`` (``["--home", H, ...]``) adds the in-process CLI paths; ``modules`` (per user/agent)
    builds real peft modules on ``memory.backbone`` (a tiny model does) and adds full answers.
    """
    echo = echo or (lambda _line: None)
    started = time.perf_counter()
    rng = random.Random(seed)
    world = World(memory, rng, Tally(), cli_args)
    items = seed_episodes(rng, per_namespace)
    world.remember(memory.store.add_many(items))
    _guarded(world, "langgraph notes", lambda: _langgraph_notes(world))
    duplicates = _guarded(world, "duplicates", lambda: _duplicates(world), {})
    if modules:
        _guarded(world, "modules", lambda: _make_modules(world, per_agent=modules))
        _spy_on_activation(world)
    paths = {p: w for p, w in WEIGHTS.items()
             if (cli_args or not p.startswith("cli.")) and (modules or p not in ("answer", "langchain.chat"))}
    for n in range(queries):  # every path once, then at random by weight
        path = list(paths)[n] if n < len(paths) else rng.choices(list(paths), weights=list(paths.values()))[0]
        world.tally.calls[path] += 1
        try:
            QUERIES[path](world, path)
        except Exception as exc:  # anything unexpected is a finding, not a crash of the harness
            world.tally.bad("errors", f"{path}: {type(exc).__name__}: {exc}")
        if (n + 1) % max(1, queries // 4) == 0:
            echo(f"  {n + 1}/{queries} queries; leaked {world.tally.leaked}, wrong {world.tally.wrong}, "
                 f"errors {world.tally.errors}")
    refused = _unhonourable(world)
    _guarded(world, "audit", lambda: _audit(world, "after the queries"))
    deletion = _guarded(world, "delete_user", lambda: _delete_user(world, victim="dave.x"), {})
    t = world.tally
    return {
        "namespaces": len(NAMESPACES), "users": len({ns.user_id for ns in NAMESPACES}),
        "episodes_seeded": len(items), "modules": len(world.owners), "queries": queries,
        "calls": dict(sorted(t.calls.items())), "operators": dict(sorted(t.operators.items())),
        "items_checked": t.items, "modules_checked": t.modules_checked,
        "leaked": t.leaked, "wrong": t.wrong, "short_searches": t.short, "errors": t.errors,
        "dropped_filters": t.dropped, "filters_refused": refused, "corrupted": t.corrupted,
        "duplicates": duplicates, "delete_user": deletion, "seconds": round(time.perf_counter() - started, 1),
        "violations": capped(t.violations),
    }


def _guarded(w: World, what: str, fn: Callable[[], Any], default: Any = None) -> Any:
    """Run one stage; an exception is a finding (``errors``), and the check goes on."""
    try:
        return fn()
    except Exception as exc:
        w.tally.bad("errors", f"{what}: {type(exc).__name__}: {exc}")
        return default


# -- the query paths ------------------------------------------------------------------------------
def _search(w: World, path: str) -> None:
    scope, k, filters = pick_scope(w.rng), w.rng.choice([1, 2, 3, 5, 10, 20, 50]), random_filter(w.rng, w.tally)
    since, until = random_range(w.rng)
    query = query_text(w.rng)
    if path == "search":
        hits = w.memory.store.search(query, scope, k, filters=filters, since=since, until=until)
    else:
        hits = w.memory.search(query, str(scope), k, filters=filters, since=since, until=until)
    w.check(path, scope, [h.episode for h in hits], expected_ids(w, scope, filters, since, until), k=k,
            detail=f"(filters {filters}, since {since}, until {until})")


def _list(w: World, path: str) -> None:
    scope, filters = pick_scope(w.rng), random_filter(w.rng, w.tally)
    since, until = random_range(w.rng)
    limit = w.rng.choice([None, None, None, 1, 5, 20])
    got = w.memory.store.list(scope, filters=filters, since=since, until=until, limit=limit)
    stamps = [(e.timestamp, e.created_at) for e in got]
    if stamps != sorted(stamps):
        w.tally.bad("wrong", f"list in {scope} is not chronological")
    w.check(path, scope, got, expected_ids(w, scope, filters, since, until), k=limit,
            detail=f"(filters {filters}, since {since}, until {until}, limit {limit})")


def _count(w: World, path: str) -> None:
    scope = pick_scope(w.rng)
    got, want = w.memory.store.count(scope), len(expected_ids(w, scope))
    if got != want:
        w.tally.bad("wrong" if got < want else "leaked", f"count({scope}) = {got}, expected {want}")


def _pending(w: World, path: str) -> None:
    scope = pick_scope(w.rng)
    w.check(path, scope, w.memory.store.pending(scope), expected_ids(w, scope, pending=True), k=None)


def _by_id(w: World, path: str) -> None:
    """get / history / update / delete / mark_absorbed with an id inside or outside the scope."""
    store, scope = w.memory.store, pick_scope(w.rng)
    episode_id, inside = pick_id(w, scope, inside=False if path == "mark_absorbed" else None)
    call = {
        "get": lambda: store.get(episode_id, scope),
        "history": lambda: store.history(episode_id, scope),
        "update": lambda: store.update(episode_id, scope, text=f"{w.truth[episode_id].text} (edited)"),
        "delete": lambda: store.delete(episode_id, scope),
        "mark_absorbed": lambda: store.mark_absorbed([episode_id], scope, "mod_foreign0"),
    }[path]
    if not inside:
        try:
            result = call()
        except NotFoundError:
            return
        w.tally.bad("leaked", f"{path}({episode_id}) in {scope} reached an episode outside it: {result!r:.120}")
        return
    result = call()
    if path == "get":
        w.check(path, scope, [result], {episode_id})
    elif path == "history":
        w.check(path, scope, result, {episode_id}, dedupe=False)
        if [e.version for e in result] != list(range(1, w.truth[episode_id].version + 1)):
            w.tally.bad("wrong", f"history({episode_id}) has versions {[e.version for e in result]}")
    elif path == "update":
        w.check(path, scope, [result], {episode_id})
        w.truth[episode_id] = result
    elif path == "delete":
        w.truth.pop(episode_id)
        w.gone.add(episode_id)


def _router(w: World, path: str) -> None:
    """The router's decision (or a full answer) for a random route: modules and episodes stay in scope."""
    scope, k, route = pick_scope(w.rng), w.rng.choice([1, 3, 5, 10]), w.rng.choice(ROUTES)
    query = query_text(w.rng)
    w.activated.clear()
    if path == "router":
        decision = w.memory.router.decide(query, scope, k, route=route)
    else:
        decision = w.memory.answer(query, scope, k=k, route=route).decision
    wide = Namespace(scope.user_id, scope.agent_id)
    w.check(f"{path}.retrieved", wide, [h.episode for h in decision.retrieved])
    w.check(f"{path}.evidence", wide, [h.episode for h in decision.evidence])
    w.check(f"{path}.recent", scope if scope.session_id else wide, list(decision.recent))
    for module_id in [*decision.modules, *(info.id for info in w.activated)]:
        w.check_module(path, wide, module_id)
    for info in w.activated:
        if not wide.contains(Namespace(info.user_id, info.agent_id, "x")):
            w.tally.bad("leaked", f"{path} in {scope} activated {info.id} of {info.user_id}/{info.agent_id}")


def _cli_search(w: World, path: str) -> None:
    scope, k = pick_scope(w.rng), w.rng.choice([1, 5, 20])
    args = ["search", query_text(w.rng), *_scope_args(scope), "-k", str(k), "--json"]
    if path == "cli.list":
        args = ["list", *_scope_args(scope), "--json"]
    rows = w.cli_json(path, args)
    if rows is not None:
        w.check(path, scope, [w.seen(row) for row in rows], expected_ids(w, scope), k=k if path == "cli.search" else None)


def _cli_get(w: World, path: str) -> None:
    episode_id, _ = pick_id(w, Namespace(w.rng.choice(NAMESPACES).user_id))
    if w.rng.random() < 0.1 and w.gone:
        episode_id = w.rng.choice(sorted(w.gone))
    if episode_id in w.gone:
        code, out, _ = cli_call(w.cli_args, ["get", episode_id, "--json"])
        if code != 2 or out.strip():
            w.tally.bad("leaked", f"cli get of deleted {episode_id} gave code {code}: {out[:120]!r}")
        return
    row = w.cli_json(path, ["get", episode_id, "--json"])
    if row is not None:
        seen = w.seen(row)
        w.check(path, w.truth[episode_id].namespace, [seen])
        if seen.id != episode_id or row["text"] != w.truth[episode_id].text:
            w.tally.bad("leaked", f"cli get {episode_id} returned {seen.id} with another text")


# -- the integrations' paths -----------------------------------------------------------------------
def _langchain_retriever(w: World, path: str) -> None:
    from agent_memory.integrations.langchain import AgentMemoryRetriever

    scope, k, filters = pick_scope(w.rng), w.rng.choice([1, 3, 5, 20]), random_filter(w.rng, w.tally)
    retriever = AgentMemoryRetriever(memory=w.memory, namespace=str(scope), k=k, filters=filters)
    docs = retriever.invoke(query_text(w.rng))
    w.check(path, scope, [w.seen(d.metadata) for d in docs], expected_ids(w, scope, filters), k=k,
            detail=f"(filters {filters})")


def _langchain_chat(w: World, path: str) -> None:
    """A LangChain chat model answering in a random scope: its evidence and modules stay in the user/agent."""
    from agent_memory.integrations.langchain import AgentMemoryChatModel

    scope = pick_scope(w.rng)
    wide = Namespace(scope.user_id, scope.agent_id)
    w.activated.clear()
    chat = AgentMemoryChatModel(memory=w.memory, namespace=str(scope), k=w.rng.choice([1, 3, 5]), max_tokens=4)
    info = chat.invoke(query_text(w.rng)).response_metadata
    evidence = [w.truth.get(i) for i in info["evidence"]]
    if None in evidence:
        w.tally.bad("leaked", f"{path} in {scope} cited an episode the truth does not hold: {info['evidence']}")
    w.check(path, wide, [e for e in evidence if e is not None])
    for module_id in [*info["modules"], *(m.id for m in w.activated)]:
        w.check_module(path, wide, module_id)


def _langgraph_notes(w: World) -> None:
    """Each user's LangGraph notes: through a store bound to the user under ``("notes",)``, and (ids that can be a
    LangGraph label, without '.') through the unbound store under ``(user, "journal")``; the same shared note
    everywhere, and one naming its owner."""
    from agent_memory.integrations.langgraph import AgentMemoryStore

    users = sorted({ns.user_id for ns in NAMESPACES})
    w.graph_store = AgentMemoryStore(w.memory)
    for user in users:
        placements = [(AgentMemoryStore(w.memory, user_id=user), ("notes",))]
        placements += [(w.graph_store, (user, "journal"))] if "." not in user else []
        for store, namespace in placements:
            store.put(namespace, "shared", {"text": "the locker code is on the fridge"})
            store.put(namespace, "own", {"text": f"note kept by {user}"})
    w.remember(e for user in users for e in w.memory.store.list(Namespace(user, "langgraph")))


def _langgraph_search(w: World, path: str) -> None:
    """LangGraph's search, bound to a user or unbound (the user label in the prefix): only that user's notes."""
    from agent_memory.integrations.langgraph import AgentMemoryStore

    user = w.rng.choice([ns.user_id for ns in NAMESPACES if "." not in ns.user_id] if w.rng.random() < 0.5
                        else [ns.user_id for ns in NAMESPACES])
    bound = "." in user or w.rng.random() < 0.5
    store = AgentMemoryStore(w.memory, user_id=user) if bound else w.graph_store
    labels = [(), ("notes",)] + ([(user,), (user, "journal")] if "." not in user else [])  # '.' is no LangGraph label
    prefix = w.rng.choice(labels) if bound else (user,)
    items = store.search(prefix, query=w.rng.choice([None, "locker code", "note kept by", query_text(w.rng)]),
                         limit=w.rng.choice([1, 2, 10]))
    for item in items:
        w.tally.items += 1
        text = item.value.get("text", "")
        if (not bound and item.namespace[0] != user) or text not in ("the locker code is on the fridge",
                                                                     f"note kept by {user}"):
            w.tally.bad("leaked", f"{path} for {user} ({'bound' if bound else 'unbound'}) returned {item.namespace} "
                        f"{item.key}: {text!r}")
    if bound and len(items) > 4:
        w.tally.bad("leaked", f"{path} for {user} (bound) returned {len(items)} notes; the user has at most 4")


def _scope_args(scope: Namespace) -> list[str]:
    args = ["--user", scope.user_id]
    args += ["--agent", scope.agent_id] if scope.agent_id else []
    return args + (["--session", scope.session_id] if scope.session_id else [])


QUERIES: dict[str, Callable[[World, str], None]] = {
    "search": _search, "memory.search": _search, "list": _list, "count": _count, "pending": _pending,
    "get": _by_id, "history": _by_id, "update": _by_id, "delete": _by_id, "mark_absorbed": _by_id,
    "router": _router, "answer": _router, "cli.search": _cli_search, "cli.list": _cli_search, "cli.get": _cli_get,
    "langchain.retriever": _langchain_retriever, "langchain.chat": _langchain_chat, "langgraph.search": _langgraph_search,
}


# -- the vendor bugs --------------------------------------------------------------------------------
def _duplicates(w: World) -> dict[str, Any]:
    """The same text added again (alone, in a batch, via the facade, elsewhere) never replaces the original."""
    store, ns, other = w.memory.store, NAMESPACES[0], NAMESPACES[3]
    text, stamp = "Please remember: my locker code is 2468.", datetime(2024, 3, 1, 9, tzinfo=timezone.utc)
    before = {n: store.count(n) for n in (ns, other)}
    original = store.add(text, ns, timestamp=stamp, metadata={"topic": "work"})
    again = [store.add(text, ns, timestamp=stamp, metadata={"topic": "work"}),
             store.add(text, ns, metadata={"topic": "food"}),
             *store.add_many([NewEpisode(text, ns), NewEpisode(text, ns, timestamp=stamp)]),
             w.memory.add(text, str(ns), timestamp=stamp)]
    elsewhere = store.add(text, other, timestamp=stamp)
    w.remember([original, *again, elsewhere])
    ids = [original.id, *(e.id for e in again), elsewhere.id]
    problems = []
    if len(set(ids)) != len(ids):
        problems.append(f"duplicate adds reused ids: {ids}")
    if store.get(original.id, ns) != original:
        problems.append("the original changed after the same text was added again")
    store.delete(again[0].id, ns)  # deleting the copy must not take the original with it
    w.truth.pop(again[0].id)
    w.gone.add(again[0].id)
    if store.get(original.id, ns) != original:
        problems.append("deleting a duplicate changed or removed the original")
    counts = {n: store.count(n) for n in (ns, other)}
    if counts[ns] != before[ns] + len(again) or counts[other] != before[other] + 1:
        problems.append(f"counts after duplicate adds: {counts}, before {before}")
    for p in problems:
        w.tally.bad("corrupted", f"duplicates: {p}")
    return {"adds_of_same_text": len(ids), "distinct_ids": len(set(ids)), "original_intact": not problems}


def _unhonourable(w: World) -> int:
    """Filters (and time bounds) the store cannot honour must raise, on every path; returns how many raised."""
    scope, refused = NAMESPACES[0], 0
    calls = {
        "store.search": lambda f, t: w.memory.store.search("travel", scope, 5, filters=f, **t),
        "store.list": lambda f, t: w.memory.store.list(scope, filters=f, **t),
        "memory.search": lambda f, t: w.memory.search("travel", str(scope), 5, filters=f, **t),
    }
    cases = [(f, {}) for f in UNHONOURABLE] + [(None, {key: value}) for key, value in BAD_TIMES]
    for filters, times in cases:
        for name, call in calls.items():
            try:
                got = call(filters, times)
            except AgentMemoryError:
                refused += 1
                continue
            except Exception as exc:
                w.tally.bad("errors", f"{name} with filter {filters!r} {times} raised {type(exc).__name__}: {exc}")
                continue
            w.tally.bad("dropped", f"{name} accepted filter {filters!r} {times} and returned {len(got)} episodes")
    return refused


def _audit(w: World, when: str) -> None:
    """Every namespace holds exactly what the ground truth says: foreign writes touched nothing."""
    for ns in NAMESPACES:
        stored = {e.id: e for e in w.memory.store.list(ns)}
        truth = {i: e for i, e in w.truth.items() if e.namespace == ns}
        if stored.keys() != truth.keys():
            w.tally.bad("corrupted", f"{when}: {ns} holds {len(stored)} episodes, truth {len(truth)} "
                        f"({len(truth.keys() - stored.keys())} missing, {len(stored.keys() - truth.keys())} extra)")
        changed = [i for i in stored.keys() & truth.keys() if stored[i] != truth[i]]
        if changed:
            w.tally.bad("corrupted", f"{when}: {len(changed)} episodes of {ns} differ from the truth, e.g. {changed[0]}")


def _delete_user(w: World, victim: str) -> dict[str, Any]:
    """delete_user(victim) removes the victim's episodes and nothing of anyone else's (a look-alike id included)."""
    store = w.memory.store
    users = sorted({ns.user_id for ns in NAMESPACES} | {g.user_id for g in GHOSTS})
    before = {u: store.count(Namespace(u)) for u in users}
    removed = store.delete_user(victim)
    removed_nobody = store.delete_user("nobody-at-all")
    after = {u: store.count(Namespace(u)) for u in users}
    for i in [i for i, e in w.truth.items() if e.namespace.user_id == victim]:
        w.gone.add(w.truth.pop(i).id)
    changed = {u: (before[u], after[u]) for u in users if u != victim and before[u] != after[u]}
    if changed:
        w.tally.bad("corrupted", f"delete_user({victim!r}) changed other users' counts: {changed}")
    if after[victim] != 0 or removed != before[victim] or removed_nobody != 0:
        w.tally.bad("wrong", f"delete_user({victim!r}) removed {removed} of {before[victim]}, left {after[victim]}")
    if store.search("locker code", Namespace(victim), 10):
        w.tally.bad("wrong", f"search still finds episodes of deleted user {victim!r}")
    _audit(w, f"after delete_user({victim!r})")
    return {"victim": victim, "removed": removed, "other_users": len(users) - 1, "other_users_changed": len(changed),
            "total_after": store.count()}


# -- modules --------------------------------------------------------------------------------------
def _make_modules(w: World, per_agent: int = 2, rank: int = 2) -> None:
    """Real peft modules (random non-zero LoRA) per user/agent, each absorbing a quarter of its episodes."""
    import torch
    from peft import get_peft_model

    from agent_memory.consolidation.trainer import LoraSettings, lora_config
    from agent_memory.registry import ModuleInfo

    backbone, registry, store = w.memory.backbone, w.memory.registry, w.memory.store
    config = lora_config(LoraSettings(rank=rank, alpha=2 * rank))
    config.init_lora_weights = False
    for user, agent in sorted({(ns.user_id, ns.agent_id) for ns in NAMESPACES}):
        scope = Namespace(user, agent)
        mine = sorted((e for e in w.truth.values() if scope.contains(e.namespace)), key=lambda e: e.id)
        for n in range(per_agent):
            chosen = [e for e in mine if e.absorbed_by is None and w.rng.random() < 0.25]
            if not chosen:
                continue
            torch.manual_seed(w.rng.randrange(2**31))
            vectors = store.embedder.embed([e.text for e in chosen])
            with registry.staging() as staged:
                peft_model = get_peft_model(backbone.model, config)
                peft_model.save_pretrained(str(staged))
                backbone.model = peft_model.unload()
                info = ModuleInfo(
                    id=registry.new_id(), user_id=user, agent_id=agent, episode_ids=tuple(e.id for e in chosen),
                    start=min(e.timestamp for e in chosen).isoformat(), end=max(e.timestamp for e in chosen).isoformat(),
                    centroid=tuple(sum(c) / len(vectors) for c in zip(*vectors)), rank=rank, alpha=2 * rank,
                    facts=len(chosen), examples=0, train_tokens=0, params=0, recall=1.0 if n == 0 else 0.5,
                    weak=False, backbone=backbone.name, backbone_fingerprint=backbone.fingerprint,
                    created_at=datetime.now(timezone.utc).isoformat(),
                )
                registry.commit(staged, info)
            store.mark_absorbed(list(info.episode_ids), scope, info.id)
            w.owners[info.id] = (user, agent)
            w.remember([store.get(e.id, scope) for e in chosen])


def _spy_on_activation(w: World) -> None:
    """Record every module set the answer path activates on the backbone."""
    adapters = w.memory.adapters
    real = adapters.activate

    def activate(infos, *args, **kwargs):
        w.activated.extend(infos)
        return real(infos, *args, **kwargs)

    adapters.activate = activate


# -- the harness ----------------------------------------------------------------------------------
def run_isolation(queries: int = 1000, modes: Sequence[str] = MODES, *, seed: int = 0, server: str | None = None,
                  embedder=None, modules: int = 2, backbone: str | None = None, cli: bool = True,
                  per_namespace: int = 30, echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """The isolation check on each backend.

    ``server``: a Chroma server URL to use instead of starting one; ``backbone``: the model the
    modules are made for (default: a tiny random Llama written to a temporary folder).
    """
    from agent_memory.embedder import OnnxEmbedder
    from agent_memory.evals.tiny_model import write_tiny_llama

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    echo = echo or (lambda _line: None)
    embedder = embedder or OnnxEmbedder.bundled()
    results: dict[str, Any] = {"check": "isolation", "machine": machine(), "seed": seed, "queries_per_backend": queries,
                               "backends": {}}
    with tempfile.TemporaryDirectory(prefix="am-isolation-") as tmp, ExitStack() as stack:
        if modules and backbone is None:
            backbone = str(write_tiny_llama(Path(tmp) / "tiny-llama"))
        for mode in modes:
            echo(f"[isolation/{mode}] {queries} queries over {len(NAMESPACES)} namespaces")
            url = server_url(mode, Path(tmp), stack, server)
            opened = open_home(mode, Path(tmp) / f"home-{mode}", embedder, url=url, backbone=backbone)
            res = check_isolation(opened.memory, queries=queries, seed=seed, cli_args=opened.cli_args if cli else None,
                                  modules=modules, per_namespace=per_namespace, echo=echo)
            results["backends"][mode] = res
            echo(f"[isolation/{mode}] {res['items_checked']} items and {res['modules_checked']} modules checked: "
                 f"leaked {res['leaked']}, wrong {res['wrong']}, errors {res['errors']}, dropped filters "
                 f"{res['dropped_filters']}, corrupted {res['corrupted']} ({res['seconds']} s)")
    backends = results["backends"].values()
    for key in ("queries", "items_checked", "modules_checked", "leaked", "wrong", "errors", "dropped_filters",
                "corrupted", "filters_refused"):
        results[key] = sum(r[key] for r in backends)
    results["violations"] = [f"{mode}: {v}" for mode, r in results["backends"].items() for v in r["violations"]]
    return results
