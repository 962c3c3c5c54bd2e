"""A/B of the training loop's CPU changes, each against the loop without them, interleaved in one run.

    python -m agent_memory.evals.ab_training_loop ../shared/data/lora_memory_paper \
        --epochs 4 --repeats 4 --json evals/results/ab_training_loop_xeon.json

Trains the 1K PhoneBook slice at r=16 for a fixed number of epochs (no early stop) with four variants:
``base`` (per-tensor master copies, unfused AdamW, peft's LoRA forward), ``opt`` (one multi-tensor copy
each way and fused AdamW), ``lora`` (LoRA update folded into one ``addmm``: ``_fused_lora_updates``) and
``all`` (``--variants`` picks some); the order rotates every repeat. Reported: each variant's tokens/s over
``base``'s in the same repeat, median over repeats, and the ratio of the medians. The rate of a shared 2-core
VM drifts by 2x over minutes: read the paired ratios, not the rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

VARIANTS = {"base": (False, False), "opt": (True, False), "lora": (False, True), "all": (True, True)}


def main(argv: list[str] | None = None) -> dict:
    import torch

    from agent_memory.atomic import write_json
    from agent_memory.backbone import Backbone
    from agent_memory.config import BackboneConfig
    from agent_memory.consolidation import trainer
    from agent_memory.consolidation.bench import load_phonebook, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the lora_memory_paper folder of ../shared/data")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--variants", default="base,opt,lora,all", help="comma-separated; base is always run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    train, _, _ = load_phonebook(args.data, "1K")
    backbone = Backbone.load(BackboneConfig())
    settings = trainer.LoraSettings(rank=16, alpha=32, max_epochs=args.epochs, learning_rate=5e-4, stop_at_accuracy=1.0)
    fused, adamw = trainer._fused_lora_updates, torch.optim.AdamW
    to_masters, to_model = trainer._MasterWeights.gradients_to_masters, trainer._MasterWeights.masters_to_model

    def per_tensor_to_masters(self):
        for p, m in zip(self._low, self._high):
            m.grad, p.grad = (None if p.grad is None else p.grad.float()), None

    def per_tensor_to_model(self):
        with torch.no_grad():
            for p, m in zip(self._low, self._high):
                p.copy_(m)

    @contextlib.contextmanager
    def peft_forward(model, adapter_name):
        yield 0

    names = ["base"] + [v for v in args.variants.split(",") if v in VARIANTS and v != "base"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                opt, lora = VARIANTS[name]
                trainer._fused_lora_updates = fused if lora else peft_forward
                trainer._MasterWeights.gradients_to_masters = to_masters if opt else per_tensor_to_masters
                trainer._MasterWeights.masters_to_model = to_model if opt else per_tensor_to_model
                torch.optim.AdamW = adamw if opt else (lambda params, **kw: adamw(params, **{**kw, "fused": False}))
                model, report = trainer.train_lora(backbone, train, settings, "default")
                backbone.model = model.unload()
                runs[name].append({"tokens_per_second": round(report.tokens_per_second, 1),
                                   "seconds": round(report.seconds, 1), "loss": round(report.final_loss, 4)})
                print(f"{repeat} {name:5s} {report.tokens_per_second:6.1f} tok/s  loss {report.final_loss:.4f}", flush=True)
    finally:
        trainer._fused_lora_updates, torch.optim.AdamW = fused, adamw
        trainer._MasterWeights.gradients_to_masters, trainer._MasterWeights.masters_to_model = to_masters, to_model
    median = {name: statistics.median(r["tokens_per_second"] for r in rs) for name, rs in runs.items()}
    # the machine drifts between repeats: each variant against base within the same repeat, then the median
    paired = {name: statistics.median(r["tokens_per_second"] / b["tokens_per_second"] for r, b in zip(rs, runs["base"]))
              for name, rs in runs.items()}
    result = {"machine": machine(), "slice": "1K", "rank": 16, "epochs": args.epochs, "repeats": args.repeats,
              "median_tokens_per_second": median,
              "ratio_of_medians_vs_base": {name: round(v / median["base"], 3) for name, v in median.items()},
              "median_paired_ratio_vs_base": {name: round(v, 3) for name, v in paired.items()}, "runs": runs}
    print(json.dumps({"paired": result["median_paired_ratio_vs_base"], "of medians": result["ratio_of_medians_vs_base"]}))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
