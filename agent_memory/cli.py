"""The ``agent-memory`` command line. Each subcommand maps to one AgentMemory call.

Contract (scripts rely on it): ``agent-memory [--home DIR] COMMAND``; ``--json``
output is stable; bad input exits non-zero with a one-line ``error: ...`` on stderr
and writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from agent_memory.config import default_home
from agent_memory.errors import AgentMemoryError
from agent_memory.types import Namespace

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Agent memory: episodic store, consolidation into LoRA modules, routed answers.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures and write JSON.")
app.add_typer(bench_app, name="bench")
modules_app = typer.Typer(no_args_is_help=True, help="Memory modules (LoRA adapters) in the home.")
app.add_typer(modules_app, name="modules")

UserOpt = typer.Option(..., "--user", "-u", help="User id (the namespace's owner).")
AgentOpt = typer.Option(None, "--agent", "-a", help="Agent id; omitted: 'default' on writes, all agents on reads.")
SessionOpt = typer.Option(None, "--session", "-s", help="Session id; omitted: 'default' on writes, all sessions on reads.")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")


@app.callback()
def _global(
    ctx: typer.Context,
    home: Optional[Path] = typer.Option(None, "--home", envvar="AGENT_MEMORY_HOME", help="Memory home folder."),
    server: Optional[str] = typer.Option(
        None, "--server", envvar="AGENT_MEMORY_CHROMA_URL", help="Chroma server URL (http://127.0.0.1:8000)."
    ),
) -> None:
    ctx.obj = {"home": str(home or default_home()), "server": server, "memory": None}


def _memory(ctx: typer.Context):
    from agent_memory.memory import AgentMemory

    if ctx.obj["memory"] is None:
        ctx.obj["memory"] = AgentMemory.open(ctx.obj["home"], server_url=ctx.obj["server"])
    return ctx.obj["memory"]


def _ns(user: str, agent: str | None, session: str | None) -> Namespace:
    if session is not None and agent is None:
        agent = "default"
    return Namespace(user, agent, session)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=None))


@app.command()
def add(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="The episode text ('-' reads standard input)."),
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    session: Optional[str] = SessionOpt,
    speaker: str = typer.Option("", "--speaker", help="Who said it."),
    role: str = typer.Option("user", "--role", help="user, assistant, system, tool or observation."),
    at: Optional[str] = typer.Option(None, "--at", help="When it was said, ISO-8601 with a timezone."),
    as_json: bool = JsonOpt,
) -> None:
    """Add one episode; prints its id."""
    if text == "-":
        text = sys.stdin.read()
    ns = _ns(user, agent, session)  # validate before loading anything heavy
    episode = _memory(ctx).add(text, ns, speaker=speaker, role=role, timestamp=at)
    _print_json({"id": episode.id}) if as_json else typer.echo(episode.id)


@app.command()
def search(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="What to look for."),
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    session: Optional[str] = SessionOpt,
    k: int = typer.Option(5, "-k", help="How many episodes to return."),
    as_json: bool = JsonOpt,
) -> None:
    """Semantic search within a namespace."""
    hits = _memory(ctx).search(query, _ns(user, agent, session), k)
    if as_json:
        return _print_json([h.to_dict() for h in hits])
    for h in hits:
        typer.echo(f"{h.score:.3f}  {h.episode.id}  {h.episode.timestamp:%Y-%m-%d %H:%M}  {h.episode.text}")


@app.command("list")
def list_(
    ctx: typer.Context,
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    session: Optional[str] = SessionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List a namespace's episodes, oldest first."""
    episodes = _memory(ctx).list(_ns(user, agent, session))
    if as_json:
        return _print_json([e.to_dict() for e in episodes])
    for e in episodes:
        status = e.absorbed_by or "pending"
        typer.echo(f"{e.id}  {e.timestamp:%Y-%m-%d %H:%M}  {e.namespace}  [{status}]  {e.text}")


@app.command()
def get(ctx: typer.Context, episode_id: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Show one episode by id."""
    episode = _memory(ctx).store.find(episode_id)
    if as_json:
        return _print_json(episode.to_dict())
    for key, value in episode.to_dict().items():
        typer.echo(f"{key}: {value}")


@app.command()
def delete(ctx: typer.Context, episode_id: str = typer.Argument(...)) -> None:
    """Delete one episode and its past versions."""
    memory = _memory(ctx)
    episode = memory.store.find(episode_id)
    memory.delete(episode_id, episode.namespace)
    typer.echo(f"deleted {episode_id}")


@app.command()
def forget(
    ctx: typer.Context,
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    session: Optional[str] = SessionOpt,
    ids: Optional[list[str]] = typer.Option(None, "--ids", help="Episode ids (repeat, or comma-separated); omitted: the whole namespace."),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="Re-consolidate what dropped modules also held, now."),
    as_json: bool = JsonOpt,
) -> None:
    """Forget a user, an agent, a session or some episodes: episodes, their history and every module that learned them."""
    episode_ids = [i for chunk in ids for i in chunk.split(",") if i] if ids else None
    report = _memory(ctx).forget(_ns(user, agent, session), episode_ids=episode_ids, retrain=retrain)
    if as_json:
        return _print_json(report.to_dict())
    typer.echo(f"forgot {report.episodes} episodes; modules dropped: {', '.join(report.modules_dropped) or '-'}; "
               f"retrained: {', '.join(report.modules_retrained) or '-'}")


@app.command()
def info(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """What the home holds: backend, embedder, counts, namespaces."""
    data = _memory(ctx).info()
    if as_json:
        return _print_json(data)
    for key, value in data.items():
        typer.echo(f"{key}: {value}")


@app.command()
def ask(
    ctx: typer.Context,
    question: str = typer.Argument(...),
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    session: Optional[str] = SessionOpt,
    k: int = typer.Option(5, "-k", help="Episodes retrieved (candidates for the prompt and module provenance)."),
    route: Optional[str] = typer.Option(None, "--route", help="Force a route: none, icl, rag, adapter, adapter+rag, adapter+icl."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Longest answer (default: the backbone config's)."),
    as_json: bool = JsonOpt,
) -> None:
    """Answer from memory: the router picks ICL, RAG, adapter modules or a hybrid, and says why."""
    result = _memory(ctx).answer(question, _ns(user, agent, session), k=k, route=route, max_new_tokens=max_new_tokens)
    if as_json:
        return _print_json(result.to_dict())
    typer.echo(result.text)
    typer.echo(f"[route={result.route} modules={','.join(result.modules) or '-'} evidence={len(result.evidence)} "
               f"prompt_tokens={result.prompt_tokens} total_ms={sum(result.latency_ms.values()):.0f}]")
    typer.echo(f"[why: {result.reason}]")


@app.command()
def consolidate(
    ctx: typer.Context,
    user: str = UserOpt,
    agent: Optional[str] = AgentOpt,
    rank: int = typer.Option(16, "--rank", help="LoRA rank of new modules."),
    epochs: int = typer.Option(30, "--epochs", help="Most passes over the synthesized QA."),
    as_json: bool = JsonOpt,
) -> None:
    """Distill pending episodes into self-tested LoRA modules."""
    from agent_memory.consolidation import ConsolidationConfig, LoraSettings

    config = ConsolidationConfig(lora=LoraSettings(rank=rank, alpha=2 * rank, max_epochs=epochs))
    result = _memory(ctx).consolidate(_ns(user, agent, None), config, progress=not as_json)
    if as_json:
        return _print_json(result.to_dict())
    for m in result.modules:
        typer.echo(f"{m.id}  facts={m.facts} rank={m.rank} recall={m.recall:.2f}{' WEAK' if m.weak else ''}")
    typer.echo(f"episodes absorbed: {result.episodes_absorbed}")


def _registry(ctx: typer.Context):
    from agent_memory.registry import AdapterRegistry

    return AdapterRegistry(Path(ctx.obj["home"]) / "modules")


@modules_app.command("list")
def modules_list(ctx: typer.Context, user: str = UserOpt, agent: Optional[str] = AgentOpt, as_json: bool = JsonOpt) -> None:
    """List a user's modules."""
    modules = _registry(ctx).list(Namespace(user).user_id, agent)
    if as_json:
        return _print_json([m.summary() for m in modules])
    for m in modules:
        typer.echo(f"{m.id}  {m.agent_id}  facts={m.facts} rank={m.rank} recall={m.recall:.2f}"
                   f"{' WEAK' if m.weak else ''}  {m.start[:10]}..{m.end[:10]}")


@modules_app.command("show")
def modules_show(ctx: typer.Context, module_id: str = typer.Argument(...)) -> None:
    """Everything the manifest records about one module (JSON)."""
    info = _registry(ctx).get(module_id).to_dict()
    info["centroid"] = f"<{len(info['centroid'])} floats>"
    _print_json(info)


@modules_app.command("delete")
def modules_delete(ctx: typer.Context, module_id: str = typer.Argument(...)) -> None:
    """Delete a module; the episodes it absorbed become pending again."""
    _memory(ctx).delete_module(module_id)
    typer.echo(f"deleted {module_id}")


@bench_app.command("store")
def bench_store(
    sizes: str = typer.Option("1000,10000", help="Comma-separated store sizes to measure search at."),
    modes: str = typer.Option("embedded,server", help="Comma-separated: embedded, server."),
    queries: int = typer.Option(200, help="Searches timed per size."),
    adds: int = typer.Option(200, help="Single adds timed."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this JSON file."),
) -> None:
    """Store latency and throughput: single add, batched add, search p50/p95."""
    from agent_memory.bench_store import run_store_benchmark

    results = run_store_benchmark(
        sizes=[int(s) for s in sizes.split(",")], modes=modes.split(","), queries=queries, adds=adds, echo=typer.echo
    )
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))
        typer.echo(f"wrote {json_out}")


@bench_app.command("router")
def bench_router(
    modules: int = typer.Option(64, help="Resident modules."),
    rank: int = typer.Option(16, help="LoRA rank of each module."),
    switches: int = typer.Option(200, help="Switches timed."),
    generations: int = typer.Option(5, help="Generations timed per variant."),
    new_tokens: int = typer.Option(32, help="Tokens generated per generation."),
    naive: bool = typer.Option(True, "--naive/--no-naive", help="Also run peft's set_adapter way."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this JSON file."),
) -> None:
    """Module switch latency, generation speed with a module active, routing overhead; naive peft beside."""
    from agent_memory.bench_router import run_router_benchmark

    results = run_router_benchmark(modules, rank, switches, generations, new_tokens, naive, echo=typer.echo)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))
        typer.echo(f"wrote {json_out}")


@bench_app.command("consolidation")
def bench_consolidation(
    data: Path = typer.Option(..., "--data", help="The lora_memory_paper folder (../shared/data/lora_memory_paper)."),
    loads: str = typer.Option("1K,2K,4K,8K", help="PhoneBook slices."),
    ranks: str = typer.Option("4,16,64", help="LoRA ranks."),
    max_epochs: int = typer.Option(40, help="Epoch cap per run (training stops early, see --stop-at)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 2e-3, x16/r above r=16)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step."),
    stop_at: float = typer.Option(1.0, "--stop-at", help="Stop once this share of the slice is reproduced under "
                                                         "teacher forcing (the eval questions are scored after)."),
    target_modules: str = typer.Option("all-linear", "--target-modules",
                                       help="Layers that get LoRA: all-linear, or names like gate_proj,up_proj,down_proj."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here (after every run; a rerun "
                                                                  "keeps the runs it holds that used the same settings)."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write recall vs load to this PNG."),
) -> None:
    """Module capacity and training speed on the seed paper's PhoneBook data."""
    from agent_memory.consolidation import LoraSettings
    from agent_memory.consolidation.bench import plot, run_capacity_saved

    settings = LoraSettings(learning_rate=learning_rate, batch_size=batch_size, stop_at_accuracy=stop_at,
                            target_modules=LoraSettings.parse_target_modules(target_modules))
    results = run_capacity_saved(json_out, data, loads.split(","), [int(r) for r in ranks.split(",")], max_epochs,
                                 echo=typer.echo, settings=settings)
    if json_out:
        typer.echo(f"wrote {json_out}")
    if plot_out:
        plot(results, plot_out)
        typer.echo(f"wrote {plot_out}")


# -- evals (issue 7) -------------------------------------------------------------------------------------
eval_app = typer.Typer(no_args_is_help=True, help="Evals: LoCoMo long-horizon memory.")
app.add_typer(eval_app, name="eval")


@eval_app.command("locomo")
def eval_locomo(
    data: Path = typer.Option(..., "--data", help="A file in the locomo10.json schema (../shared/data/locomo/locomo_dev5.json)."),
    conversations: Optional[str] = typer.Option(None, "--conversations", help="Comma-separated sample ids (default: all)."),
    methods: str = typer.Option("none,icl,rag,adapter,router", "--methods",
                                help="Comma-separated routes forced (none, icl, rag, adapter, adapter+rag, adapter+icl) "
                                     "and router (the policy picks)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N questions of each conversation."),
    out: Path = typer.Option(Path("evals/results/locomo"), "--out", help="Results folder (answers.jsonl, summary.json, report.md, homes/); a rerun resumes."),
    k: int = typer.Option(5, "-k", help="Episodes retrieved per question."),
    consolidate_every: int = typer.Option(0, "--consolidate-every", min=0, help="Consolidate after every N sessions (0: never)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank of the modules consolidation makes."),
    epochs: int = typer.Option(30, "--epochs", help="Most passes over the synthesized QA per module."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Longest answer."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone (default: the embedded SmolLM2)."),
    sessions: Optional[int] = typer.Option(None, "--sessions",
                                           help="Only each conversation's first N sessions, and the questions whose evidence lies in them."),
    tokens_per_rank: int = typer.Option(64, "--tokens-per-rank", min=1,
                                        help="Module size: answer tokens one module holds per unit of rank (r=16 x 64 = 1024)."),
    synthesizer: str = typer.Option("template", "--synthesizer",
                                    help="Consolidation's training QA: template (default) or distill (the backbone reading each turn teaches)."),
    min_module_recall: Optional[float] = typer.Option(None, "--min-module-recall",
                                                      help="Trust modules whose self-test recall is at least this (default: not weak; 0 trusts all)."),
) -> None:
    """LoCoMo: ingest each conversation with its dates, consolidate, answer by each method, LoCoMo F1 per category."""
    from agent_memory.config import BackboneConfig, MemoryConfig, RouterConfig
    from agent_memory.consolidation import ConsolidationConfig, LoraSettings
    from agent_memory.evals.locomo import run_locomo

    config = MemoryConfig(router=RouterConfig(min_module_recall=min_module_recall),
                          **({"backbone": BackboneConfig(model=backbone)} if backbone else {}))
    consolidation = ConsolidationConfig(lora=LoraSettings(rank=rank, alpha=2 * rank, max_epochs=epochs),
                                        answer_tokens_per_rank=tokens_per_rank)
    run_locomo(data, out, conversations=conversations.split(",") if conversations else None,
               methods=[m for m in methods.split(",") if m], limit=limit, k=k, consolidate_every=consolidate_every,
               max_new_tokens=max_new_tokens, memory_config=config, consolidation=consolidation, sessions=sessions,
               synthesizer=synthesizer, echo=typer.echo)
    typer.echo((out / "report.md").read_text().rstrip())
    typer.echo(f"wrote {out / 'summary.json'}, {out / 'report.md'}, {out / 'f1_by_category.png'}, {out / 'answers.jsonl'}")


@eval_app.command("calibrate")
def eval_calibrate(
    data: Path = typer.Option(..., "--data", help="The LoCoMo JSON the run answered (../shared/data/locomo/locomo_dev5.json)."),
    results: List[Path] = typer.Option([Path("evals/results/locomo_dev")], "--results",
                                       help="The --out folder of a finished `eval locomo` run (answers.jsonl, homes/); "
                                            "repeat it to pool runs, a conversation in one of them only."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Episodes retrieved per question (default: each run's -k)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where calibration.json/.md go (default: the one --results folder)."),
    routes_from: Optional[Path] = typer.Option(None, "--routes-from",
                                               help="A run on the same data whose forced routes (say none, icl, rag) "
                                                    "stand in for those a --results run did not force."),
) -> None:
    """Fit the router policy on all conversations but one and score it on that one, for each in turn."""
    from agent_memory.evals.calibration import run_calibration

    run_calibration(data, results, k, out, echo=typer.echo, routes_from=routes_from)  # several --results without --out: refused there
    out = out or results[0]
    typer.echo((out / "calibration.md").read_text().rstrip())
    typer.echo(f"wrote {out / 'calibration.json'}, {out / 'calibration.md'}")


@eval_app.command("compare")
def eval_compare(
    first: Path = typer.Option(..., "--first", help="The --out folder of one `eval locomo` run (the baseline)."),
    second: Path = typer.Option(..., "--second", help="The --out folder of another run on the same data."),
    categories: str = typer.Option("1,2,3,4", "--categories", help="LoCoMo categories to score (1 multi-hop .. 5 adversarial)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON here."),
) -> None:
    """Two LoCoMo runs question by question: F1 per method and the paired difference with a 95% interval."""
    from agent_memory.atomic import write_json
    from agent_memory.evals.locomo import compare_runs, comparison_report

    comparison = compare_runs(first, second, [_index("--categories", c) for c in categories.split(",")])
    typer.echo(comparison_report(comparison).rstrip())
    if json_out:
        write_json(json_out, comparison)
        typer.echo(f"wrote {json_out}")


@eval_app.command("breakdown")
def eval_breakdown(
    results: List[Path] = typer.Option(..., "--results",
                                       help="The --out folder of a finished `eval locomo` run; repeat it to pool runs "
                                            "(each method on each conversation from the first run that answered it there)."),
    seen: Optional[Path] = typer.Option(None, "--seen", help="A run whose questions count as seen (e.g. the slice the "
                                                             "router was fitted on); the rest are split out as unseen."),
    baseline: str = typer.Option("rag", "--baseline", help="The method every other is compared with, question by question."),
    constant: List[str] = typer.Option([], "--constant", help="Also score this one answer given to every question "
                                                              "(say 2023: what naming the year earns); repeatable."),
    data: Optional[Path] = typer.Option(None, "--data", help="The LoCoMo file the runs used: adds the chance level of "
                                                             "answering the date of a random session."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the breakdown as JSON here."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Also draw it as a PNG here (F1 per slice, date scores)."),
) -> None:
    """F1 of each method on temporal vs other questions (and seen vs unseen), minus a baseline with 95% intervals;
    on temporal questions also the date score (the answer's first date in the gold's window)."""
    from agent_memory.atomic import write_json
    from agent_memory.evals.breakdown import breakdown, breakdown_plot, breakdown_report

    table = breakdown(results, seen, baseline, constant, data)
    typer.echo(breakdown_report(table).rstrip())
    if json_out:
        write_json(json_out, table)
    if plot_out:
        breakdown_plot(table, plot_out)
    for out in filter(None, (json_out, plot_out)):
        typer.echo(f"wrote {out}")


@eval_app.command("paper")
def eval_paper(
    probe: str = typer.Option(..., "--probe",
                              help="Which probe of the seed paper: capacity, internalization, multimodule, merge, hybrid."),
    data: Path = typer.Option(..., "--data", help="The lora_memory_paper folder (../shared/data/lora_memory_paper)."),
    out: Path = typer.Option(Path("evals/results/paper"), "--out", help="Results folder; a rerun resumes."),
    loads: str = typer.Option("1K,2K,4K,8K", help="capacity: PhoneBook slices."),
    ranks: str = typer.Option("4,16,64", help="capacity: LoRA ranks."),
    papers: Optional[str] = typer.Option(None, "--papers", help="internalization/hybrid: paperQA.json indexes (default: all)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="internalization/hybrid: methods (default: the probe's)."),
    sectors: int = typer.Option(4, "--sectors", help="multimodule/merge: how many of the 16 sectors (one module each)."),
    facts: int = typer.Option(48, "--facts", help="multimodule/merge: facts kept per sector (48 = the 1K slice)."),
    rank: int = typer.Option(16, "--rank", help="multimodule/merge: rank of each sector module (the big one: sectors x rank)."),
    max_epochs: Optional[int] = typer.Option(None, help="Epoch cap per module (capacity/multimodule/merge 40, PaperQA 12)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone (default: the embedded SmolLM2)."),
) -> None:
    """The seed paper's probes on its own data, each table beside the paper's finding."""
    from agent_memory.config import BackboneConfig
    from agent_memory.consolidation import LoraSettings
    from agent_memory.errors import ValidationError
    from agent_memory.evals.internalization import run_internalization_probe
    from agent_memory.evals.multimodule import run_multimodule_probe
    from agent_memory.evals.paper import PROBES, run_capacity_probe

    if probe not in PROBES:
        raise ValidationError("--probe", f"{probe!r} is not built", f"use one of: {', '.join(PROBES)}")
    backbone_config = BackboneConfig(model=backbone) if backbone else None
    paperqa = probe in ("internalization", "hybrid")
    epochs = max_epochs if max_epochs is not None else 12 if paperqa else 40
    if probe == "capacity":
        run_capacity_probe(data, out, loads.split(","), [int(r) for r in ranks.split(",")], epochs,
                           echo=typer.echo, backbone_config=backbone_config)
    elif paperqa:
        chosen = [_index("--papers", p) for p in papers.split(",")] if papers else None
        run_internalization_probe(data, out, chosen, [m for m in methods.split(",") if m] if methods else None,
                                  echo=typer.echo, settings=LoraSettings(max_epochs=epochs),
                                  backbone_config=backbone_config, probe=probe)
    else:
        run_multimodule_probe(data, out, probe, sectors, facts, LoraSettings(rank=rank, alpha=2 * rank, max_epochs=epochs),
                              backbone_config=backbone_config, echo=typer.echo)
    typer.echo((out / f"{probe}.md").read_text().rstrip())
    typer.echo("wrote " + ", ".join(str(out / f"{probe}.{ext}") for ext in ("json", "md", "png")))


def _index(option: str, text: str) -> int:
    from agent_memory.errors import ValidationError

    if not text.strip().isdigit():
        raise ValidationError(option, f"{text!r} is not an index", "pass comma-separated integers like 0,1,2")
    return int(text)


# -- scheduled consolidation (issue 5) -------------------------------------------------------------------
schedule_app = typer.Typer(no_args_is_help=True, help="Scheduled consolidation of every namespace, with run history.")
app.add_typer(schedule_app, name="schedule")

MinPendingOpt = typer.Option(None, "--min-pending", help="Consolidate a namespace only from this many pending episodes.")
MaxPerRunOpt = typer.Option(None, "--max-per-run", help="At most this many episodes per namespace per run.")
RankOpt = typer.Option(None, "--rank", help="LoRA rank of new modules (default 16).")
EpochsOpt = typer.Option(None, "--epochs", help="Most passes over the synthesized QA (default 30).")
JobstoreOpt = typer.Option(None, "--jobstore", help="SQLAlchemy URL of the job store (default HOME/schedule/jobs.sqlite).")


def _scheduler(ctx: typer.Context, mode: str = "background", **overrides: Any):
    """Settings: HOME/schedule/config.json (a ScheduleConfig dict) if present, then the command's options."""
    from agent_memory.consolidation.scheduler import ConsolidationScheduler

    overrides.setdefault("server_url", ctx.obj["server"])
    return ConsolidationScheduler.from_home(ctx.obj["home"], mode=mode, **overrides)


def _pass_line(summary: dict[str, Any]) -> str:
    runs = " ".join(f"{r['namespace']}={r['status']}(+{r['episodes_absorbed']})" for r in summary["runs"]) or "nothing due"
    return f"{summary['finished_at']}  pass {summary['pass_id']} {summary['status']}: {runs}"


@schedule_app.command("start")
def schedule_start(
    ctx: typer.Context,
    cron: Optional[str] = typer.Option(None, "--cron", help="Crontab expression (default '0 3 * * *', nightly)."),
    every: Optional[int] = typer.Option(None, "--every", help="Run every N seconds instead of on a cron expression."),
    timezone: Optional[str] = typer.Option(None, "--timezone", help="IANA zone of the cron expression (default local)."),
    min_pending: Optional[int] = MinPendingOpt,
    max_per_run: Optional[int] = MaxPerRunOpt,
    rank: Optional[int] = RankOpt,
    epochs: Optional[int] = EpochsOpt,
    jobstore: Optional[str] = JobstoreOpt,
) -> None:
    """Run the scheduler in the foreground until SIGTERM / Ctrl-C (a run in progress finishes its namespace)."""
    import logging
    import os
    import signal

    scheduler = _scheduler(ctx, "blocking", cron=cron, every_seconds=every, timezone=timezone, min_pending=min_pending,
                           max_per_run=max_per_run, rank=rank, epochs=epochs, jobstore_url=jobstore)
    scheduler.on_pass = lambda summary: typer.echo(_pass_line(summary))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("agent_memory.consolidation.scheduler").setLevel(logging.INFO)
    sys.stdout.reconfigure(line_buffering=True)

    def on_signal(signum: int, _frame: Any) -> None:
        if scheduler.stopping:  # second signal: leave now; the run's history row becomes 'abandoned', nothing half-made stays
            typer.echo("abandoning the current run (consolidation is crash safe)", err=True)
            os._exit(128 + signum)
        typer.echo(f"{signal.Signals(signum).name}: stopping (a run in progress finishes its current namespace)", err=True)
        scheduler.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    typer.echo(f"scheduling consolidation of {scheduler.home}: {scheduler.config.describe_trigger()}; "
               f"job store {scheduler.jobstore_label}")
    scheduler.start()
    scheduler.wait_idle()
    typer.echo("scheduler stopped")


@schedule_app.command("status")
def schedule_status(ctx: typer.Context, jobstore: Optional[str] = JobstoreOpt, as_json: bool = JsonOpt) -> None:
    """The stored job (trigger, next run time), the job store, who holds the home lock, the last run."""
    data = _scheduler(ctx, jobstore_url=jobstore).status()
    if as_json:
        return _print_json(data)
    for key in ("home", "jobstore", "job_id", "scheduled", "trigger", "next_run_time", "lock_holder"):
        typer.echo(f"{key}: {data[key]}")
    last = data["last_run"]
    typer.echo(f"last_run: {last['started_at']} {last['namespace']} {last['status']}" if last else "last_run: None")


@schedule_app.command("run-now")
def schedule_run_now(
    ctx: typer.Context,
    min_pending: Optional[int] = MinPendingOpt,
    max_per_run: Optional[int] = MaxPerRunOpt,
    rank: Optional[int] = RankOpt,
    epochs: Optional[int] = EpochsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One pass now, in this process: every namespace with pending episodes. Exit code 1 if a namespace failed."""
    scheduler = _scheduler(ctx, min_pending=min_pending, max_per_run=max_per_run, rank=rank, epochs=epochs)
    summary = scheduler.run_now().to_dict()
    if as_json:
        _print_json(summary)
    else:
        typer.echo(_pass_line(summary))
        for r in summary["runs"]:
            typer.echo(f"  {r['namespace']}: {r['status']} absorbed={r['episodes_absorbed']} modules={','.join(r['modules'])}"
                       f"{'  error: ' + r['error'] if r['error'] else ''}")
    if summary["status"] == "failed":
        raise typer.Exit(1)


@schedule_app.command("history")
def schedule_history(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", help="Newest N runs."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="user/agent, or a user (all its agents)."),
    status: Optional[str] = typer.Option(None, "--status", help="running, ok, failed, skipped or abandoned."),
    as_json: bool = JsonOpt,
) -> None:
    """Recorded namespace runs, newest first: status, episodes absorbed, modules, recall, error."""
    from agent_memory.consolidation.history import RunHistory

    runs = RunHistory.of_home(ctx.obj["home"]).list(limit, namespace, status)
    if as_json:
        return _print_json([r.to_dict() for r in runs])
    for r in runs:
        recall = "-" if r.recall is None else f"{r.recall:.2f}"
        typer.echo(f"{r.started_at}  {r.status:9}  {r.namespace}  absorbed={r.episodes_absorbed} recall={recall} "
                   f"modules={','.join(r.modules) or '-'}{'  error: ' + r.error if r.error else ''}")


# -- reliability checks (issue 8) -------------------------------------------------------------------------
check_app = typer.Typer(no_args_is_help=True, help="Reliability checks that print figures, write JSON and exit 1 on any violation.")
app.add_typer(check_app, name="check")
CheckJsonOpt = typer.Option(None, "--json", help="Write the figures and violations to this JSON file.")


def _check_outcome(results: dict[str, Any], json_out: Optional[Path]) -> None:
    """Write the JSON, list the violations; exit 1 if there is any."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2))
        typer.echo(f"wrote {json_out}")
    violations = results["violations"]
    for line in violations[:20]:
        typer.echo(f"violation: {line}", err=True)
    if violations:
        typer.echo(f"{results['check']}: {len(violations)} violation(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{results['check']}: no violations")


@check_app.command("isolation")
def check_isolation(
    queries: int = typer.Option(1000, "--queries", min=1, help="Random queries per backend."),
    modes: str = typer.Option("memory,embedded,server", "--modes", help="Comma-separated: memory, embedded, server."),
    seed: int = typer.Option(0, "--seed", help="Seed of the episodes, queries and filters."),
    json_out: Optional[Path] = CheckJsonOpt,
) -> None:
    """Tenant isolation: random queries and filters over 10 namespaces through every path; delete_user, duplicates."""
    from agent_memory.evals.reliability.backends import parse_modes
    from agent_memory.evals.reliability.isolation import run_isolation

    results = run_isolation(queries, parse_modes(modes), seed=seed, echo=typer.echo)
    typer.echo(f"isolation: {results['queries']} queries, {results['items_checked']} items and "
               f"{results['modules_checked']} modules checked; leaked {results['leaked']}, wrong {results['wrong']}, "
               f"errors {results['errors']}, dropped filters {results['dropped_filters']}, corrupted {results['corrupted']}")
    _check_outcome(results, json_out)


@check_app.command("faults")
def check_faults(
    ops: int = typer.Option(400, "--ops", min=1, help="Adds in the stream (every fifth is a two-user batch)."),
    cycles: int = typer.Option(3, "--cycles", min=1, help="SIGKILL/restart cycles of the Chroma server."),
    down: float = typer.Option(2.0, "--down", min=0.0, help="Seconds the server stays down each cycle."),
    json_out: Optional[Path] = CheckJsonOpt,
) -> None:
    """Server faults: a real `chroma run` killed and restarted during adds and searches; nothing acknowledged is lost."""
    from agent_memory.evals.reliability.faults import run_faults

    r = run_faults(ops, cycles, down_s=down, echo=typer.echo)
    typer.echo(f"faults: {r['adds_attempted']} adds ({r['episodes_acknowledged']} episodes acknowledged, lost "
               f"{r['lost']}), {r['searches']} searches; failed calls {r['failing_call']['n']} (unclear "
               f"{r['unclear_errors']}), failing call p50 {r['failing_call']['p50_ms']} ms max "
               f"{r['failing_call']['max_ms']} ms")
    _check_outcome(r, json_out)


@check_app.command("load")
def check_load(
    clients: int = typer.Option(50, "--clients", min=1, help="Concurrent client threads."),
    seconds: float = typer.Option(60.0, "--seconds", min=0.1, help="How long the clients run, per backend."),
    modes: str = typer.Option("embedded,server", "--modes", help="Comma-separated: memory, embedded, server."),
    search_ratio: float = typer.Option(0.5, "--search-ratio", min=0.0, max=1.0, help="Share of calls that search."),
    json_out: Optional[Path] = CheckJsonOpt,
) -> None:
    """Load: concurrent clients adding and searching; zero errors and zero lost adds expected."""
    from agent_memory.evals.reliability.backends import parse_modes
    from agent_memory.evals.reliability.load import run_load

    results = run_load(clients, seconds, parse_modes(modes), search_ratio=search_ratio, echo=typer.echo)
    _check_outcome(results, json_out)


@check_app.command("crash")
def check_crash(
    trials: int = typer.Option(20, "--trials", min=1, help="Seeded SIGKILL trials."),
    episodes: int = typer.Option(8, "--episodes", min=2, help="Pending episodes per trial (two agents)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the episodes and kill moments."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone to consolidate on (default: a tiny random Llama)."),
    json_out: Optional[Path] = CheckJsonOpt,
) -> None:
    """Crash safety: SIGKILL consolidations at random moments; no episode lost, no half module, next run completes."""
    from agent_memory.evals.reliability.crash import run_crash_trials

    r = run_crash_trials(trials, seed, episodes, backbone_model=backbone, echo=typer.echo)
    typer.echo(f"crash: {r['trials']} trials, {r['killed']} killed mid-run (modules committed at the kill: "
               f"{r['modules_at_kill']}); lost episodes {r['lost_episodes']}, half modules {r['half_modules']}")
    _check_outcome(r, json_out)


def quiet_progress_bars() -> None:
    """Model-loading progress bars are noise in a command's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns library errors into one line and exit code 2."""
    quiet_progress_bars()
    try:
        app(args=argv, prog_name="agent-memory")
    except AgentMemoryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
