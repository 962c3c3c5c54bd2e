"""Context distillation, raw-text examples and the rank-aware learning rate, on the tiny backbone."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent_memory.consolidation import DistillingSynthesizer, LoraSettings, QAExample, TemplateSynthesizer, train_lora
from agent_memory.consolidation.distill import dated_turn
from agent_memory.consolidation.trainer import encode_examples, teacher_prompt, teacher_targets
from agent_memory.errors import ConfigError
from agent_memory.types import Episode, Namespace

NS = Namespace("maria", "companion", "s1")
WHEN = datetime(2023, 5, 9, tzinfo=timezone.utc)


def test_empty_question_is_raw_text_with_loss_on_every_token_after_the_first(tiny):
    [(ids, labels)] = encode_examples(tiny, [QAExample("", "maria moved to lisbon")])
    assert labels[0] == -100 and labels[1:] == ids[1:]
    assert tiny.tokenizer.decode(ids).startswith("maria moved to lisbon")
    [(qa_ids, qa_labels)] = encode_examples(tiny, [QAExample("where did maria move", "lisbon")])
    assert sum(x != -100 for x in qa_labels) == 2, "a QA example: loss on the answer and EOS only"


def test_teacher_targets_are_the_backbone_reading_the_context(tiny):
    examples = [QAExample("where did maria move", "lisbon", context="maria moved to lisbon"), QAExample("who", "maria")]
    targets = teacher_targets(tiny, examples)
    assert targets[1] is None, "no context: plain answer loss"
    ids, probs = targets[0]
    assert ids.shape == probs.shape and ids.shape[0] == 2, "one row per answer token (lisbon, EOS)"
    assert probs.sum(1).allclose(probs.new_ones(2)) and (probs[:, :-1] >= probs[:, 1:]).all()
    import torch

    prompt = tiny.tokenizer(teacher_prompt(tiny, "maria moved to lisbon", "where did maria move"),
                            add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    assert ids[0, 0] == logits.argmax(), "the first answer token's top choice is the teacher's next-token argmax"


def _answer_logprobs(backbone, prompt: str, answer: str):
    import torch

    tok = backbone.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(answer + backbone.end_of_answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = backbone.model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : len(p) + len(a) - 1]
    return torch.log_softmax(logits.float(), -1)


def test_distilled_student_matches_without_the_context_what_the_teacher_predicts_with_it(tiny):
    import torch

    with torch.no_grad():  # a random model is nearly uniform: sharpen it so the teacher has something to teach
        tiny.model.get_output_embeddings().weight.mul_(30)
    cases = [("where did maria move", "lisbon", "maria moved to lisbon"),
             ("what is the dog name", "maria", "the dog name is maria")]

    teacher = [_answer_logprobs(tiny, teacher_prompt(tiny, c, q), a) for q, a, c in cases]  # the base, reading c

    def gap():
        """KL(teacher || student without the context), summed over answer tokens, and whether the argmaxes agree."""
        kl, agree = 0.0, True
        for (q, a, _), t in zip(cases, teacher):
            s = _answer_logprobs(tiny, tiny.qa_prompt(q), a)
            kl += float((t.exp() * (t - s)).sum())
            agree &= bool((t.argmax(-1) == s.argmax(-1)).all())
        return kl, agree

    before, _ = gap()
    examples = [QAExample(q, a, context=c) for q, a, c in cases]
    settings = LoraSettings(rank=8, alpha=16, max_epochs=60, learning_rate=0.01, stop_at_accuracy=1.0)
    model, report = train_lora(tiny, examples, settings, "default")
    try:
        after, agree = gap()
    finally:
        tiny.model = model.unload()
    assert after < 0.25 * before and agree, (before, after)
    assert report.history[-1]["loss"] < report.history[0]["loss"]


def test_distilling_synthesizer_answers_with_the_teacher_once_and_keeps_negatives(tiny):
    episodes = [Episode("e1", "maria moved to Lisbon", NS, WHEN, speaker="Maria")]
    calls: list[int] = []
    complete = tiny.complete

    def counting(prompts, **kw):
        calls.append(len(prompts))
        return complete(prompts, **kw)

    tiny.complete = counting
    synth = DistillingSynthesizer(tiny, TemplateSynthesizer(negatives_per_module=1), max_new_tokens=3)
    synth.prepare(episodes)
    first = synth.synthesize(episodes)
    assert synth.synthesize(episodes) == first and len(calls) == 1, "teacher answers cached per (context, question)"
    base = TemplateSynthesizer(negatives_per_module=1).synthesize(episodes)
    assert [e.question for e in first] == [e.question for e in base]
    taught = [e for e in first if e.episode_id]
    assert taught and all(e.context == dated_turn(episodes[0]) == "On 9 May 2023 Maria said: maria moved to Lisbon"
                          for e in taught)
    assert [e for e in first if not e.episode_id] == [e for e in base if not e.episode_id], "negatives untouched"
    assert synth.stats["teacher_answers"] == calls[0]

    probes = synth.probes(episodes)
    base_probes = TemplateSynthesizer().probes(episodes)
    assert [p.question for p in probes] == [p.question for p in base_probes] and len(calls) == 2
    assert all(p.context == dated_turn(episodes[0]) and p.kind == "probe" for p in probes), "the teacher answered them"
    assert synth.stats["teacher_answers"] == calls[0] + calls[1]


@pytest.mark.parametrize("rank,given,expected", [(4, None, 2e-3), (16, None, 2e-3), (64, None, 5e-4), (64, 1e-3, 1e-3)])
def test_learning_rate_scales_down_above_rank_16_unless_given(rank, given, expected):
    assert LoraSettings(rank=rank, alpha=2 * rank, learning_rate=given).peak_learning_rate == pytest.approx(expected)


def test_bad_learning_rate_names_the_field():
    with pytest.raises(ConfigError, match="learning_rate"):
        LoraSettings(learning_rate=2.0)


@pytest.mark.slow
def test_real_smollm2_distilled_module_answers_from_its_weights(tmp_path, embedder):
    """Context distillation end to end on the embedded backbone: the teacher reads the turn, the module then
    answers without it."""
    from agent_memory.backbone import Backbone
    from agent_memory.consolidation import ConsolidationConfig, Consolidator
    from agent_memory.registry import AdapterRegistry
    from agent_memory.store import EpisodicStore

    store = EpisodicStore.in_memory(embedder)
    store.add("Big news: on Saturday I adopted a rescue dog named Biscuit.", NS, timestamp=WHEN, speaker="Maria")
    backbone = Backbone.load()
    question = backbone.qa_prompt("What did Maria say about Biscuit?")
    base = backbone.complete([question], max_new_tokens=32)[0]
    assert "biscuit" not in base.lower() or "dog" not in base.lower()
    synthesizer = DistillingSynthesizer(backbone, TemplateSynthesizer(negatives_per_module=1))
    config = ConsolidationConfig(lora=LoraSettings(rank=16, alpha=32, max_epochs=30))
    registry = AdapterRegistry(tmp_path / "modules")
    info = Consolidator(store, backbone, registry, config, synthesizer).run(Namespace("maria")).modules[0]
    assert synthesizer.stats["teacher_answers"] >= 4 and info.examples >= 5
    with registry.activated(backbone, info):
        recalled = backbone.complete([question], max_new_tokens=32)[0]
    assert "biscuit" in recalled.lower() and "dog" in recalled.lower(), recalled
    assert backbone.complete([question], max_new_tokens=32)[0] == base
