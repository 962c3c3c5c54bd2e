"""Context distillation: the backbone teaches its own module, with the episode in the teacher's prompt.

Caccia et al. (2025) found that training a knowledge module to match the model that *reads* the
document beats plain next-token training on it, and it needs no stronger generator. Here the
questions come from another synthesizer (templates by default); the teacher is the backbone
without any adapter, reading the episode's context and then the question. Its greedy answer
becomes the training answer, and the example carries the context, so the trainer fits the
student (backbone + LoRA, question only) to the teacher's next-token distribution over that
answer (``trainer.teacher_targets``). Negative questions (no episode) keep their fixed answer.

Teacher answers are generated once per (context, question) and cached: ``Consolidator.plan``
synthesizes each episode once for sizing and again for training. The self-test's held-out probes get
the teacher's answers as well, so a module is tested against what it was taught.
"""

from __future__ import annotations

from typing import Callable, Sequence

from agent_memory.config import require_positive_int
from agent_memory.types import Episode

from agent_memory.consolidation.synthesis import Synthesizer, TemplateSynthesizer, spoken_date
from agent_memory.consolidation.trainer import QAExample, teacher_prompt


def dated_turn(episode: Episode) -> str:
    """The default teacher context: ``On 9 May 2023 Maria said: ...``."""
    return f"On {spoken_date(episode)} {episode.speaker or 'the user'} said: {episode.text}"


class DistillingSynthesizer:
    """Questions from ``base``; answers (and soft targets) from the backbone reading each episode's context."""

    def __init__(
        self,
        backbone,
        base: Synthesizer | None = None,
        context: Callable[[Episode], str] = dated_turn,
        max_new_tokens: int = 48,
        batch_size: int = 16,
    ) -> None:
        self.backbone = backbone
        self.base = base or TemplateSynthesizer()
        self.context = context
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        require_positive_int(self, "max_new_tokens", "batch_size")
        self._answers: dict[tuple[str, str], str] = {}
        self.stats = {"teacher_answers": 0, "empty_kept_base": 0}

    def prepare(self, episodes: Sequence[Episode]) -> None:
        """Let the base prepare, then have the teacher answer every question of the run in batches."""
        self.base.prepare(episodes)
        self.synthesize(episodes)

    def synthesize(self, episodes: Sequence[Episode]) -> list[QAExample]:
        return self._taught(episodes, self.base.synthesize(episodes))

    def probes(self, episodes: Sequence[Episode]) -> list[QAExample]:
        """The base's held-out paraphrases, answered by the teacher too: the self-test then asks whether the
        module answers a question it never saw as the backbone reading the turn would, the target it was
        trained to. (Scored against the turn's own words instead, a module that learned the teacher's
        phrasing well would look weak.)"""
        return self._taught(episodes, self.base.probes(episodes))

    def _taught(self, episodes: Sequence[Episode], examples: list[QAExample]) -> list[QAExample]:
        """``examples`` with the teacher's answer (and its context) for each one tied to an episode of ``episodes``."""
        contexts = {e.id: self.context(e) for e in episodes}
        todo = sorted({(contexts[ex.episode_id], ex.question) for ex in examples
                       if ex.episode_id in contexts and (contexts[ex.episode_id], ex.question) not in self._answers})
        if todo:
            prompts = [teacher_prompt(self.backbone, c, q) for c, q in todo]
            answers = self.backbone.complete(prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
            self._answers.update(zip(todo, (a.strip() for a in answers)))
            self.stats["teacher_answers"] += len(todo)
        out = []
        for ex in examples:
            key = (contexts.get(ex.episode_id or ""), ex.question)
            answer = self._answers.get(key) if key[0] else None
            if answer:
                out.append(QAExample(ex.question, answer, ex.episode_id, ex.kind, context=key[0]))
            else:
                self.stats["empty_kept_base"] += bool(key[0])
                out.append(ex)
        return out
