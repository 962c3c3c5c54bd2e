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
    k: int = typer.Option(5, "-k", help="Episodes retrieved into the prompt."),
    as_json: bool = JsonOpt,
) -> None:
    """Answer a question from memory on the backbone."""
    result = _memory(ctx).answer(question, _ns(user, agent, session), k=k)
    if as_json:
        return _print_json(result.to_dict())
    typer.echo(result.text)
    typer.echo(f"[route={result.route} evidence={len(result.evidence)} prompt_tokens={result.prompt_tokens}]")


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
