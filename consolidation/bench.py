"""``agent-memory bench consolidation``: how much a LoRA module holds, and how fast it learns it.

On the seed paper's PhoneBook data (path given, never copied): exact-match recall on
the paper's eval questions versus load (1K, 2K, 4K, 8K token slices) and rank, tokens
stored per LoRA parameter, train tokens/s and wall time; beside it, in the same run, a
naive fp32 peft loop (full-vocabulary logits everywhere, default chat template with its
system prompt, unbucketed batches) as the throughput baseline. Prints, writes JSON and a PNG.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from agent_memory.atomic import write_json
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig
from agent_memory.errors import ValidationError

from agent_memory.consolidation.trainer import LoraSettings, QAExample, lora_config, train_lora

PHONEBOOK_LINE = re.compile(r"Question: (.*?) Answer: (.*)")


def load_phonebook(data_dir: str | Path, load: str) -> tuple[list[QAExample], list[QAExample], int]:
    """Training pairs of one slice, the paper's eval subset, and the slice's size in characters."""
    data_dir = Path(data_dir)
    train_path, eval_path = data_dir / f"phonebook_qa_{load}.csv", data_dir / f"phonebook_eval_qa_{load}.json"
    if not train_path.is_file() or not eval_path.is_file():
        raise ValidationError("data", f"{train_path.name} or {eval_path.name} is missing in {data_dir}",
                              "pass the lora_memory_paper folder of ../shared/data")
    rows = [r["text"] for r in csv.DictReader(train_path.open(encoding="utf-8"))]
    train = [QAExample(*PHONEBOOK_LINE.match(r).groups()) for r in rows]
    evals = [QAExample(q["question"] + "?", q["answer"]) for q in json.loads(eval_path.read_text(encoding="utf-8"))]
    return train, evals, sum(len(r) for r in rows)


def exact_match(backbone: Backbone, evals: list[QAExample]) -> float:
    answers = backbone.complete([backbone.qa_prompt(q.question) for q in evals], max_new_tokens=16)
    return sum(a.strip() == q.answer for a, q in zip(answers, evals)) / len(evals)


def naive_tokens_per_second(
    train: list[QAExample], config: BackboneConfig | None = None, steps: int = 6, settings: LoraSettings | None = None
) -> float:
    """The baseline loop: fp32, full logits from model(labels=...), default chat template, no bucketing.

    ``settings`` gives the LoRA layers and the batch size, so the baseline trains what the loop it is compared with does.
    """
    import torch
    from peft import get_peft_model

    settings = settings or LoraSettings()
    batch_size = settings.batch_size
    backbone = Backbone.load(config or BackboneConfig(dtype="float32"))
    tok = backbone.tokenizer
    model = get_peft_model(backbone.model, lora_config(settings))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    tokens, started = 0, time.perf_counter()
    for step in range(steps):
        batch = train[(step * batch_size) % len(train):][:batch_size]
        texts = [backbone.format_chat([{"role": "user", "content": q.question}]) + q.answer + tok.eos_token for q in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(enc["attention_mask"].sum())
    return tokens / (time.perf_counter() - started)


def machine() -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU model and core count."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")), "")
    return {"platform": platform.platform(), "cpu": model or platform.processor(), "cores": os.cpu_count()}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def matmul_ceiling(backbone: Backbone, tokens: int = 2048, repeats: int = 5) -> dict[str, Any] | None:
    """The hardware's bound on training LoRA on every layer: no step can beat its frozen matmuls.

    Each decoder layer's linear maps run forward and once more backward (input gradients; frozen
    weights need no weight gradients), timed here at the model's shapes and dtype. Attention
    scores, norms, the LoRA factors and the LM head come on top, so real training is slower.
    None for models without the usual Llama-style config fields.
    """
    import torch
    import torch.nn.functional as F

    cfg = backbone.model.config
    try:
        h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
        q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    except (AttributeError, TypeError):
        return None
    shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]  # (out, in): q k v o gate up down
    dtype, seconds, flops = backbone.dtype, 0.0, 0
    with torch.no_grad():
        for out_f, in_f in shapes:
            x, w = torch.randn(tokens, in_f, dtype=dtype), torch.randn(out_f, in_f, dtype=dtype)
            grad = torch.randn(tokens, out_f, dtype=dtype)
            F.linear(x, w), grad @ w
            started = time.perf_counter()
            for _ in range(repeats):
                F.linear(x, w), grad @ w
            seconds += (time.perf_counter() - started) / repeats
            flops += 4 * out_f * in_f
    return {"matmul_gflops": round(flops * tokens / seconds / 1e9, 1), "flops_per_token": flops * layers,
            "tokens_per_second": round(tokens / (seconds * layers), 1), "dtype": str(dtype)}


def run_capacity(
    data_dir: str | Path,
    loads: list[str],
    ranks: list[int],
    max_epochs: int = 40,
    echo: Callable[[str], None] = print,
    backbone_config: BackboneConfig | None = None,
    settings: LoraSettings | None = None,
    previous: dict[str, Any] | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one module per (load, rank) from scratch, score it, then time the naive loop on the first load.

    ``settings`` gives everything but the rank (alpha is kept at 2r). Runs of ``previous`` results
    made with the same settings are kept, not rerun; ``on_run`` sees the results after each run.
    """
    backbone_config = backbone_config or BackboneConfig()
    base = settings or LoraSettings()
    backbone = Backbone.load(backbone_config)
    recipe = json.loads(json.dumps(  # as the JSON holds it (a tuple of target modules reads back as a list)
        {k: v for k, v in asdict(replace(base, max_epochs=max_epochs)).items() if k not in ("rank", "alpha")}))
    results: dict[str, Any] = {
        "machine": machine(), "backbone": backbone.name, "dtype": str(backbone.dtype), "settings": recipe, "runs": [],
        "ceiling": matmul_ceiling(backbone),
    }
    if results["ceiling"]:
        echo(f"frozen-weight matmuls alone: {results['ceiling']['matmul_gflops']:.0f} GFLOP/s, so all-layer LoRA "
             f"training cannot pass {results['ceiling']['tokens_per_second']:.0f} tokens/s here")
    if previous and previous.get("settings") == recipe and previous.get("backbone") == backbone.name:
        results["runs"] = list(previous.get("runs", []))
        if "baseline" in previous:  # until this run measures its own, so a kill mid-grid does not drop it
            results["baseline"] = previous["baseline"]
    for load in loads:
        train, evals, chars = load_phonebook(data_dir, load)
        slice_tokens = sum(backbone.count_tokens(f"Question: {q.question} Answer: {q.answer}") for q in train)
        for rank in ranks:
            if any(r["load"] == load and r["rank"] == rank for r in results["runs"]):
                echo(f"[{load} r={rank}] kept from the previous results")
                continue
            settings = replace(base, rank=rank, alpha=2 * rank, max_epochs=max_epochs)
            peft_model, report = train_lora(backbone, train, settings, "default")
            try:
                em = exact_match(backbone, evals)
            finally:
                backbone.model = peft_model.unload()
            run = {
                "load": load, "facts": len(train), "slice_tokens": slice_tokens, "rank": rank,
                "learning_rate": settings.peak_learning_rate,
                "params": report.trainable_params, "exact_match": round(em, 4), "epochs": report.epochs,
                "seconds": round(report.seconds, 1), "train_tokens": report.train_tokens,
                "tokens_per_second": round(report.tokens_per_second, 1),
                "tokens_per_param": slice_tokens / report.trainable_params,
            }
            results["runs"].append(run)
            if on_run:
                on_run(results)
            echo(f"[{load} r={rank}] EM {em:.3f} after {report.epochs} epochs, {report.seconds:.0f} s, "
                 f"{report.tokens_per_second:.0f} train tokens/s, {run['tokens_per_param']:.2e} tokens/param")
    # the baseline and this loop back to back on the same slice and rank, so their ratio shares the machine's state
    first = load_phonebook(data_dir, loads[0])[0]
    compared = replace(base, rank=16, alpha=32, max_epochs=3, stop_at_accuracy=1.0)
    peft_model, report = train_lora(backbone, first, compared, "default")
    backbone.model = peft_model.unload()
    naive_config = BackboneConfig(model=backbone_config.model, cache_dir=backbone_config.cache_dir, dtype="float32")
    naive = naive_tokens_per_second(first, naive_config, settings=compared)
    ours = report.tokens_per_second
    results["baseline"] = {"load": loads[0], "rank": 16, "tokens_per_second": round(ours, 1),
                           "naive_fp32_tokens_per_second": round(naive, 1), "speedup_vs_naive": round(ours / naive, 2)}
    echo(f"same slice, r=16, back to back: naive fp32 loop {naive:.0f} train tokens/s; this loop {ours:.0f} "
         f"({ours / naive:.2f}x)")
    return results


def run_capacity_saved(path: Path | None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run_capacity`` that keeps ``path``'s finished runs and rewrites it after every run (no path: neither)."""
    previous = json.loads(path.read_text()) if path and path.is_file() else None
    results = run_capacity(*args, previous=previous, on_run=(lambda r: write_json(path, r)) if path else None, **kwargs)
    if path:
        write_json(path, results)
    return results


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rank in sorted({r["rank"] for r in results["runs"]}):
        rows = [r for r in results["runs"] if r["rank"] == rank]
        ax.plot([r["slice_tokens"] for r in rows], [r["exact_match"] for r in rows], marker="o", label=f"r={rank}")
    ax.set_xscale("log")
    ax.set_xlabel("load (training tokens in the slice)")
    ax.set_ylabel("exact match on the paper's eval questions")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"PhoneBook recall vs load, {results['backbone']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
