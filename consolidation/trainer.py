"""LoRA training on synthesized QA: the loop that writes memory into weights.

What makes it fast and effective on a CPU (each measured in ``bench consolidation``):

* loss on answer tokens only, and logits computed only at those positions (the
  LM head over a 49k vocabulary at every prompt position is most of a naive step);
* short prompts (no default system prompt) and length-bucketed batches (little padding);
* bf16 weights where the hardware supports it (the backbone's dtype), and the LoRA
  factors in the same dtype during training, with fp32 master copies for AdamW (fp32
  factors made every layer cast its activations and run skinny fp32 matmuls: about a
  third of a step); the trained factors are handed back in fp32;
* per step, one multi-tensor copy each way between factors and masters, fused AdamW, and the
  LoRA update folded into one ``addmm`` per layer (``_fused_lora_updates``): together 1.18x the
  step without them (``python -m agent_memory.evals.ab_training_loop``);
* eager attention while training on a CPU: PyTorch's CPU flash-attention backward took
  ~30 ms per layer for a 48 x 40-token batch, more than the layer's matmuls;
* early stop once every example's answer is reproduced token for token under teacher
  forcing, which is exactly when greedy decoding reproduces it.

Two more kinds of example: one with an empty question is raw text (next-token loss on all
of it, the seed paper's weak baseline), and one with a ``context`` is distilled: the loss
on its answer is the cross-entropy to the backbone's own next-token distribution (top-k)
when the context is in its prompt (context distillation, Caccia et al. 2025), so the module
learns to answer without the context what the backbone answers with it.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from agent_memory.config import require_positive_int
from agent_memory.errors import ConfigError


@dataclass(frozen=True)
class QAExample:
    """One training pair, with the episode it came from (``None`` for negatives) and its kind."""

    question: str
    answer: str
    episode_id: str | None = None
    kind: str = "qa"
    context: str | None = None
    """Text the teacher reads before the question when the example is distilled (``None``: plain answer loss)."""


@dataclass(frozen=True)
class LoraSettings:
    """How a memory module is trained."""

    rank: int = 16
    """LoRA rank r."""
    alpha: int = 32
    """LoRA alpha; the update is scaled by alpha / r. alpha = 2r with lr 2e-3 worked on SmolLM2 (DESIGN.md)."""
    learning_rate: float | None = None
    """Peak AdamW learning rate (5-step warm-up, then linear decay to 10% over max_epochs); ``None``: 2e-3 up to
    r=16, scaled by 16/r above (at alpha = 2r, r=64 at 2e-3 never fit PhoneBook 2K; at 5e-4 it did)."""
    max_epochs: int = 30
    """Upper bound on passes over the examples; training usually stops earlier."""
    batch_size: int = 8
    """Examples per step (length-bucketed)."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Which linear layers get LoRA: ``all-linear`` or module names like ("q_proj", "v_proj")."""
    stop_at_accuracy: float = 1.0
    """Stop once this fraction of examples is reproduced exactly under teacher forcing."""
    seed: int = 0
    """Seed for initialisation and batch order."""

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate training uses: the one given, else 2e-3 * min(1, 16 / rank)."""
        return self.learning_rate if self.learning_rate is not None else 2e-3 * min(1.0, 16 / self.rank)

    def __post_init__(self) -> None:
        require_positive_int(self, "rank", "alpha", "max_epochs", "batch_size")
        if self.learning_rate is not None and not (isinstance(self.learning_rate, float) and 0 < self.learning_rate < 1):
            raise ConfigError("learning_rate", f"{self.learning_rate!r} is out of range", "use a float in (0, 1) or None")
        if not 0 < self.stop_at_accuracy <= 1:
            raise ConfigError("stop_at_accuracy", f"{self.stop_at_accuracy!r} is out of range", "use (0, 1]")
        targets = self.target_modules
        if not (targets == "all-linear" or (isinstance(targets, tuple) and targets and all(
                isinstance(t, str) and t.strip() for t in targets))):
            raise ConfigError("target_modules", f"{targets!r} names no layers",
                              'use "all-linear" or a tuple of layer names such as ("gate_proj", "up_proj", "down_proj")')

    @staticmethod
    def parse_target_modules(text: str) -> str | tuple[str, ...]:
        """``all-linear`` as is, else comma-separated layer names as a tuple (the CLI's ``--target-modules``)."""
        text = text.strip()
        return text if text == "all-linear" else tuple(t.strip() for t in text.split(","))


@dataclass
class TrainReport:
    """What one training run did."""

    epochs: int = 0
    steps: int = 0
    train_tokens: int = 0
    seconds: float = 0.0
    trainable_params: int = 0
    final_loss: float = math.nan
    final_accuracy: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    targets = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none")


def encode_examples(backbone, examples: Sequence[QAExample]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the short QA prompt, then the answer and EOS; loss on the answer only.

    An example with an empty question is raw text: no prompt, loss on every token after the first.
    """
    tok = backbone.tokenizer
    out = []
    for ex in examples:
        answer = tok(ex.answer + backbone.end_of_answer, add_special_tokens=False)["input_ids"]
        if not ex.question:
            out.append((answer, [-100] + answer[1:]))
            continue
        prompt = tok(backbone.qa_prompt(ex.question), add_special_tokens=False)["input_ids"]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


TEACHER_TOP_K = 32
"""How many of the teacher's most likely next tokens a distilled answer token is trained towards."""


def teacher_prompt(backbone, context: str, question: str) -> str:
    """The prompt the teacher reads: the context, then the question (the student sees only the question)."""
    return backbone.qa_prompt(f"{context}\n\n{question}")


def teacher_targets(backbone, examples: Sequence[QAExample], batch_size: int = 8,
                    encoded: Sequence[tuple[list[int], list[int]]] | None = None) -> list[tuple[Any, Any] | None]:
    """Per example with a context: (top-k token ids, their renormalized probabilities) at each answer token,
    from the backbone (no adapter) reading the context; ``None`` for examples without one.

    ``encoded`` (``encode_examples`` of the same examples) spares tokenizing the answers again.
    """
    import torch

    tok = backbone.tokenizer
    encoded = encoded or encode_examples(backbone, examples)
    rows: dict[int, tuple[list[int], int]] = {}
    for n, ex in enumerate(examples):
        if ex.context:
            prompt = tok(teacher_prompt(backbone, ex.context, ex.question), add_special_tokens=False)["input_ids"]
            answer = [x for x in encoded[n][1] if x != -100]
            rows[n] = (prompt + answer, len(answer))
    out: list[tuple[Any, Any] | None] = [None] * len(examples)
    order = sorted(rows, key=lambda n: len(rows[n][0]))
    decoder, head = backbone.model.get_decoder(), backbone.model.get_output_embeddings()
    k = min(TEACHER_TOP_K, head.weight.shape[0])
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, _, mask = _pad([(rows[n][0], rows[n][0]) for n in batch], backbone.tokenizer.pad_token_id, backbone.device)
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, n in enumerate(batch):
                length, answer = len(rows[n][0]), rows[n][1]
                top = head(hidden[row, length - answer - 1 : length - 1]).float().topk(k, dim=-1)
                out[n] = (top.indices.cpu(), torch.softmax(top.values, dim=-1).cpu())
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped with similar lengths (little padding), batches in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train_lora(
    backbone,
    examples: Sequence[QAExample],
    settings: LoraSettings,
    adapter_name: str,
    *,
    progress: bool = False,
    on_epoch: Callable[[int, float, float], None] | None = None,
):
    """Train a fresh LoRA adapter on the backbone. Returns (peft model, report).

    The caller saves the adapter and then calls ``peft_model.unload()`` to give the
    backbone its plain layers back.
    """
    import torch
    from peft import get_peft_model

    if not examples:
        raise ConfigError("examples", "no training examples", "pass at least one QAExample")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    encoded = encode_examples(backbone, examples)
    distilled = any(e.context for e in examples)
    soft = _soft_targets(encoded, teacher_targets(backbone, examples, encoded=encoded)) if distilled else None
    # adapters in the backbone's dtype (peft would otherwise up-cast them to fp32)
    model = get_peft_model(backbone.model, lora_config(settings), adapter_name=adapter_name, autocast_adapter_dtype=False)
    try:
        model.train()
        weights = _MasterWeights([p for p in model.parameters() if p.requires_grad])
        report = TrainReport(trainable_params=weights.numel)
        optimizer = torch.optim.AdamW(weights.masters, lr=settings.peak_learning_rate, weight_decay=0.0, fused=True)
        lm = model.get_base_model()
        decoder, head = lm.get_decoder(), lm.get_output_embeddings()
        pad = backbone.tokenizer.pad_token_id
        warmup = 5
        total_steps = settings.max_epochs * math.ceil(len(encoded) / settings.batch_size)
        bar = _progress(settings.max_epochs, progress)
        started = time.perf_counter()
        with _training_attention(lm), _fused_lora_updates(model, adapter_name):
            for epoch in range(1, settings.max_epochs + 1):
                losses, exact = [], 0
                for batch in bucketed_batches([len(e[0]) for e in encoded], settings.batch_size, rng):
                    ids, labels, mask = _pad([encoded[i] for i in batch], pad, backbone.device)
                    targets = _batch_targets(soft, batch, backbone.device) if soft else None
                    lr = settings.peak_learning_rate * _schedule(report.steps, warmup, total_steps)
                    loss, correct = _step(decoder, head, (ids, mask, labels, targets), weights, optimizer, lr)
                    report.steps += 1
                    report.train_tokens += int(mask.sum())
                    losses.append(loss)
                    exact += correct
                accuracy = exact / len(encoded)
                report.epochs, report.final_loss, report.final_accuracy = epoch, sum(losses) / len(losses), accuracy
                report.history.append({"epoch": epoch, "loss": round(report.final_loss, 4), "accuracy": round(accuracy, 4)})
                bar.update(1)
                bar.set_postfix(loss=f"{report.final_loss:.3f}", exact=f"{accuracy:.2f}")
                if on_epoch:
                    on_epoch(epoch, report.final_loss, accuracy)
                if accuracy >= settings.stop_at_accuracy:
                    break
        bar.close()
        report.seconds = time.perf_counter() - started
        weights.finish()
        model.eval()
    except BaseException:
        backbone.model = model.unload()  # a failed training leaves no LoRA layers on the backbone
        raise
    return model, report


class _MasterWeights:
    """fp32 master copies of low-precision LoRA factors: AdamW steps the masters, the model computes in its dtype.

    (AdamW on bf16 factors would drop updates smaller than 1/256 of a weight, which the decayed
    learning rate reaches.) fp32 factors are their own masters. The copies each way are one
    multi-tensor ``_foreach_copy_`` over all factors (a per-tensor loop was ~10% of a CPU step).
    """

    def __init__(self, params: list) -> None:
        import torch

        self.params = params
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_() for p in params]
        self.numel = sum(p.numel() for p in params)
        pairs = [(p, m) for p, m in zip(params, self.masters) if m is not p]
        self._low, self._high = [p for p, _ in pairs], [m for _, m in pairs]

    def gradients_to_masters(self) -> None:
        import torch

        if not self._low:
            return
        if any(p.grad is None for p in self._low):  # a factor the loss never reached: copy one by one
            for p, m in zip(self._low, self._high):
                m.grad = None if p.grad is None else p.grad.float()
        else:
            for m in self._high:
                if m.grad is None:
                    m.grad = torch.empty_like(m)
            torch._foreach_copy_([m.grad for m in self._high], [p.grad for p in self._low])
        for p in self._low:
            p.grad = None

    def masters_to_model(self) -> None:
        import torch

        if self._low:
            with torch.no_grad():
                torch._foreach_copy_(self._low, self._high)

    def finish(self) -> None:
        """Hand the trained factors back in fp32 (saved that way; inference casts activations for them)."""
        for p, m in zip(self._low, self._high):
            p.data = m.detach()


@contextmanager
def _training_attention(lm):
    """Eager attention while training on a CPU (faster there on short sequences), the model's own otherwise."""
    before = getattr(lm.config, "_attn_implementation", None)
    switch = lm.device.type == "cpu" and before == "sdpa" and hasattr(lm, "set_attn_implementation")
    if switch:
        lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            lm.set_attn_implementation(before)


@contextmanager
def _fused_lora_updates(model, adapter_name: str):
    """While training, each plain LoRA linear computes ``base(x) + scaling * (x A^T) B^T`` as one ``addmm``.

    peft's forward runs ``lora_B(lora_A(x)) * scaling`` and then adds it to the base output: two
    extra passes over every activation (``mul`` alone was ~9% of a CPU step). Folding the scale and
    the sum into the second matmul computes the same (to one rounding in bf16). Only layers where
    that holds are switched: no dropout, no variant (DoRA...), not merged, this adapter the only
    active one, factors in the base layer's dtype. Yields how many were switched; gives peft's
    forward back on exit.
    """
    import torch
    import torch.nn.functional as F
    from peft.tuners.lora import Linear as LoraLinear

    def fused(layer):
        lora_a, lora_b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
        scaling = layer.scaling[adapter_name]

        def forward(x, *args, **kwargs):
            base = layer.base_layer(x, *args, **kwargs)
            flat = x.reshape(-1, x.shape[-1])
            out = torch.addmm(base.reshape(-1, base.shape[-1]), F.linear(flat, lora_a), lora_b.t(), alpha=scaling)
            return out.view(base.shape)

        return forward

    switched = []
    for module in model.modules():
        if (isinstance(module, LoraLinear) and not module.merged and not module.disable_adapters
                and list(module.active_adapters) == [adapter_name] and adapter_name not in module.lora_variant
                and isinstance(module.lora_dropout[adapter_name], torch.nn.Identity)
                and module.lora_A[adapter_name].weight.dtype == module.base_layer.weight.dtype):
            module.forward = fused(module)
            switched.append(module)
    try:
        yield len(switched)
    finally:
        for module in switched:
            del module.forward


def _step(decoder, head, batch, weights: "_MasterWeights", optimizer, lr: float) -> tuple[float, int]:
    """One optimizer step on a padded batch; returns its loss and how many examples it got exactly right."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    ids, mask, labels, targets = batch
    loss, correct = _answer_loss(decoder, head, ids, mask, labels, targets)
    loss.backward()
    weights.gradients_to_masters()
    torch.nn.utils.clip_grad_norm_(weights.masters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    weights.masters_to_model()
    return loss.item(), int(correct.sum())


def _schedule(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to 10% by the last possible step (late epochs oscillate less)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))


def _soft_targets(encoded, teacher: list) -> list[tuple[Any, Any]]:
    """Per example, (token ids, probabilities) [answer tokens, k]: the teacher's where it has one, else one-hot gold."""
    import torch

    k = next(t[0].shape[1] for t in teacher if t is not None)
    out = []
    for (_, labels), t in zip(encoded, teacher):
        if t is None:
            gold = torch.tensor([x for x in labels[1:] if x != -100])
            probs = torch.zeros(len(gold), k)
            probs[:, 0] = 1.0
            t = (gold[:, None].expand(-1, k).contiguous(), probs)
        out.append(t)
    return out


def _batch_targets(soft, batch: list[int], device):
    """A batch's soft targets in the order its answer tokens are gathered (row by row)."""
    import torch

    return torch.cat([soft[i][0] for i in batch]).to(device), torch.cat([soft[i][1] for i in batch]).to(device)


def _answer_loss(decoder, head, ids, mask, labels, targets=None):
    """Cross-entropy on answer tokens only, with the LM head applied only there.

    ``targets`` (token ids, probabilities), one row per answer token, replace the one-hot gold
    tokens with soft ones (distillation). Returns the mean loss and, per example, whether
    every answer token is the argmax.
    """
    import torch
    import torch.nn.functional as F

    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    where = target != -100
    logits = head(hidden[where]).float()
    gold = target[where]
    if targets is None:
        loss = F.cross_entropy(logits, gold)
    else:
        ids_k, probs = targets
        loss = -(probs * F.log_softmax(logits, dim=-1).gather(1, ids_k)).sum(1).mean()
    with torch.no_grad():
        wrong = torch.zeros_like(target, dtype=torch.bool)
        wrong[where] = logits.argmax(-1) != gold
        correct = ~wrong.any(dim=1)
    return loss, correct


def _pad(rows, pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, (row_ids, row_labels) in enumerate(rows):
        ids[n, : len(row_ids)] = torch.tensor(row_ids)
        labels[n, : len(row_labels)] = torch.tensor(row_labels)
        mask[n, : len(row_ids)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training memory module", unit="epoch", disable=not enabled, leave=False)
