"""``agent-memory bench router``: module switching, generation with a module active, routing overhead.

Set-up: the real backbone and ``modules`` random LoRA modules of rank ``rank`` on all linear
layers, in standard peft format in a temporary registry (speed does not depend on what the
weights hold, so they are not trained). Measured in the same run:

* **ours** (:class:`~agent_memory.adapters.ResidentAdapters`): every module resident; switch =
  ``activate`` of a random module; generation with it active = merge, ``generate``, restore.
* **naive** (peft): every module loaded into one ``PeftModel`` with ``load_adapter``; switch =
  ``set_adapter``; generation runs peft's unmerged LoRA forward.
* **base**: the backbone with no module, the reference for generation speed.
* **routing**: :meth:`~agent_memory.router.Router.decide` over an embedded Chroma store whose
  episodes the modules absorbed; the overhead beyond retrieval is the ``recent`` + ``route`` stages.

Figures are printed and returned; nothing is asserted.
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from agent_memory.bench_store import _cpus, _percentiles, _timed, synthetic_episodes
from agent_memory.config import BackboneConfig
from agent_memory.registry import AdapterRegistry, ModuleInfo
from agent_memory.types import Namespace

PROMPT = "Tell me everything you remember about Maria, her dog and her new city."


def make_random_modules(backbone, registry: AdapterRegistry, n: int, rank: int, namespace: Namespace,
                        episode_ids: list[list[str]], centroids: list[list[float]], seed: int = 0) -> list[ModuleInfo]:
    """``n`` peft-format modules with small random LoRA weights, committed to ``registry``."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import load_file, save_file

    from agent_memory.consolidation.trainer import LoraSettings, lora_config

    config = lora_config(LoraSettings(rank=rank, alpha=2 * rank))
    config.init_lora_weights = False
    gen = torch.Generator().manual_seed(seed)
    infos = []
    with tempfile.TemporaryDirectory(prefix="am-template-") as template:
        peft_model = get_peft_model(backbone.model, config)
        peft_model.save_pretrained(template)
        backbone.model = peft_model.unload()
        shapes = {k: v.shape for k, v in load_file(f"{template}/adapter_model.safetensors").items()}
        for i in range(n):
            with registry.staging() as staged:
                (staged / "adapter_config.json").write_text(Path(template, "adapter_config.json").read_text())
                tensors = {k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()}
                save_file(tensors, str(staged / "adapter_model.safetensors"))
                now = datetime.now(timezone.utc).isoformat()
                info = ModuleInfo(
                    id=registry.new_id(), user_id=namespace.user_id, agent_id=namespace.agent_id or "default",
                    episode_ids=tuple(episode_ids[i]), start=now, end=now, centroid=tuple(centroids[i]), rank=rank,
                    alpha=2 * rank, facts=len(episode_ids[i]), examples=0, train_tokens=0,
                    params=sum(s.numel() for s in shapes.values()), recall=1.0, weak=False, backbone=backbone.name,
                    backbone_fingerprint=backbone.fingerprint, created_at=now,
                )
                infos.append(registry.commit(staged, info))
    return infos


def _generate_seconds(backbone, new_tokens: int) -> Callable[[], None]:
    import torch

    enc = backbone.tokenizer(backbone.qa_prompt(PROMPT), return_tensors="pt", add_special_tokens=False)

    def run() -> None:
        with torch.inference_mode():
            backbone.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=backbone.tokenizer.pad_token_id)

    return run


def run_router_benchmark(
    modules: int = 64, rank: int = 16, switches: int = 200, generations: int = 5, new_tokens: int = 32,
    naive: bool = True, backbone_config: BackboneConfig | None = None, echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    from agent_memory.adapters import ResidentAdapters
    from agent_memory.backbone import Backbone
    from agent_memory.embedder import OnnxEmbedder
    from agent_memory.router import Router
    from agent_memory.store import EpisodicStore

    rng = random.Random(0)
    backbone = Backbone.load(backbone_config or BackboneConfig())
    gen = _generate_seconds(backbone, new_tokens)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpus()},
        "backbone": backbone.name, "dtype": str(backbone.dtype), "device": str(backbone.device),
        "modules": modules, "rank": rank, "new_tokens": new_tokens,
    }
    with tempfile.TemporaryDirectory(prefix="am-bench-router-") as tmp:
        # a store whose episodes the modules absorbed, so routing has real provenance to follow
        embedder = OnnxEmbedder.bundled()
        store = EpisodicStore.embedded(Path(tmp) / "store", embedder)
        ns = Namespace("user0", "agent")
        items = [e for e in synthetic_episodes(modules * 40, 1) if e.namespace.user_id == "user0"][: modules * 4]
        episodes = store.add_many(items)
        groups = [episodes[i::modules] for i in range(modules)]
        centroids = [[sum(c) / len(g) for c in zip(*embedder.embed([e.text for e in g]))] for g in groups]
        registry = AdapterRegistry(Path(tmp) / "modules")
        started = time.perf_counter()
        infos = make_random_modules(backbone, registry, modules, rank, ns, [[e.id for e in g] for g in groups], centroids)
        echo(f"{modules} random r={rank} modules written in {time.perf_counter() - started:.1f} s")
        for info, group in zip(infos, groups):
            store.mark_absorbed([e.id for e in group], ns, info.id)

        gen()  # warm-up
        adapters = ResidentAdapters(backbone, registry, capacity=modules)
        started = time.perf_counter()
        adapters.preload(infos)
        load_s = time.perf_counter() - started
        switch = _percentiles(_timed(lambda: adapters.activate([rng.choice(infos)]), switches))
        pairs = [tuple(rng.sample(infos, 2)) for _ in range(min(switches, 20))]
        pair_first = _percentiles(_timed(lambda: adapters.activate(list(pairs.pop())), len(pairs)))
        pair = rng.sample(infos, 2)
        adapters.activate(pair)
        pair_cached = _percentiles(_timed(lambda: adapters.activate(pair), switches))
        merge = []

        def merged_generation() -> None:
            adapters.activate([rng.choice(infos)])
            t = time.perf_counter()
            with adapters.merged():
                merge.append(time.perf_counter() - t)
                gen()

        base, ours = [], []
        for _ in range(generations):  # interleaved, so drift in CPU speed hits both alike
            base += [new_tokens / s for s in _timed(gen, 1)]
            ours += [new_tokens / s for s in _timed(merged_generation, 1)]
        results["base_tokens_per_s"] = round(statistics.median(base), 2)
        echo(f"base model: {results['base_tokens_per_s']} tokens/s ({new_tokens} new tokens)")
        results["ours"] = {
            "preload_s": round(load_s, 2), "switch": switch, "switch_pair_ties_first": pair_first,
            "switch_pair_ties_cached": pair_cached, "merge_p50_ms": round(statistics.median(merge) * 1000, 2),
            "tokens_per_s": round(statistics.median(ours), 2),
            "generation_ratio_vs_base": round(statistics.median(ours) / statistics.median(base), 3),
        }
        echo(f"ours: switch p50 {switch['p50_ms']} ms (p95 {switch['p95_ms']}) with {modules} resident; pair (TIES) "
             f"first {pair_first['p50_ms']} ms, cached {pair_cached['p50_ms']} ms; merge {results['ours']['merge_p50_ms']} "
             f"ms inside each generation; {results['ours']['tokens_per_s']} tokens/s = "
             f"{results['ours']['generation_ratio_vs_base']}x base")

        router = Router(store, registry)
        questions = [f"what happened with {e.text.split(' talked about ')[1].split(' on day')[0]}?"
                     for e in rng.sample(episodes, min(100, len(episodes)))]
        stages: dict[str, list[float]] = {"retrieve": [], "recent": [], "route": []}
        for q in questions:
            timings: dict[str, float] = {}
            router.decide(q, Namespace("user0", "agent", "s0"), 5, timings=timings)
            for key in stages:
                stages[key].append(timings[key] / 1000)
        results["routing"] = {key: _percentiles(v) for key, v in stages.items()}
        overhead = [r + c for r, c in zip(stages["recent"], stages["route"])]
        results["routing"]["overhead_beyond_retrieval"] = _percentiles(overhead)
        echo("routing: " + ", ".join(f"{k} p50 {v['p50_ms']} ms" for k, v in results["routing"].items()))

        if naive:
            results["naive_peft"] = _naive(backbone, registry, infos, gen, switches, generations, new_tokens, rng, echo)
            n = results["naive_peft"]
            base_after = statistics.median(new_tokens / s for s in _timed(gen, generations))
            n["base_tokens_per_s_after"] = round(base_after, 2)
            n["generation_ratio_vs_base"] = round(n["tokens_per_s"] / base_after, 3)
            # our switch is a pointer change; the merge each generation pays is the fair counterpart of set_adapter
            results["switch_plus_merge_speedup_vs_naive"] = round(
                n["switch"]["p50_ms"] / (switch["p50_ms"] + results["ours"]["merge_p50_ms"]), 1)
            echo(f"naive peft: switch p50 {n['switch']['p50_ms']} ms; {n['tokens_per_s']} tokens/s = "
                 f"{n['generation_ratio_vs_base']}x base; load {n['load_s']} s")
    return results


def _naive(backbone, registry, infos, gen, switches, generations, new_tokens, rng, echo) -> dict[str, Any]:
    from peft import PeftModel

    started = time.perf_counter()
    model = PeftModel.from_pretrained(backbone.model, str(registry.path(infos[0])), adapter_name=infos[0].id)
    for info in infos[1:]:
        model.load_adapter(str(registry.path(info)), adapter_name=info.id)
    load_s = time.perf_counter() - started
    echo(f"naive peft: {len(infos)} adapters loaded in {load_s:.1f} s")
    base_model = backbone.model
    backbone.model = model
    try:
        switch = _percentiles(_timed(lambda: model.set_adapter(rng.choice(infos).id), switches))
        model.set_adapter(infos[0].id)
        tps = [new_tokens / s for s in _timed(gen, generations)]
    finally:
        backbone.model = model.unload() if hasattr(model, "unload") else base_model
    return {"load_s": round(load_s, 2), "switch": switch, "tokens_per_s": round(statistics.median(tps), 2)}
