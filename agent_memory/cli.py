"""The ``agent-memory`` command line. Each subcommand maps to one AgentMemory call.

Contract (scripts rely on it): ``agent-memory [--home DIR] COMMAND``; ``--json``
output is stable; bad input exits non-zero with a one-line ``error: ...`` on stderr
and writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

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
    as_json: bool = JsonOpt,
) -> None:
    """Answer from memory: the router picks ICL, RAG, adapter modules or a hybrid, and says why."""
    result = _memory(ctx).answer(question, _ns(user, agent, session), k=k, route=route)
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
    max_epochs: int = typer.Option(40, help="Epoch cap per run (training stops early at 100% teacher-forced EM)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this JSON file."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write recall vs load to this PNG."),
) -> None:
    """Module capacity and training speed on the seed paper's PhoneBook data."""
    from agent_memory.consolidation.bench import plot, run_capacity

    results = run_capacity(data, loads.split(","), [int(r) for r in ranks.split(",")], max_epochs, echo=typer.echo)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))
        typer.echo(f"wrote {json_out}")
    if plot_out:
        plot(results, plot_out)
        typer.echo(f"wrote {plot_out}")


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
