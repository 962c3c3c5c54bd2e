"""Consolidation: distill episodic memory into self-tested LoRA modules."""

from agent_memory.consolidation.consolidator import ConsolidationConfig, ConsolidationResult, Consolidator
from agent_memory.consolidation.distill import DistillingSynthesizer
from agent_memory.consolidation.fanout import HomeLock, PassSummary, run_pass
from agent_memory.consolidation.history import RunHistory, RunRecord
from agent_memory.consolidation.scheduler import ConsolidationScheduler, ScheduleConfig, run_scheduled
from agent_memory.consolidation.synthesis import TemplateSynthesizer
from agent_memory.consolidation.trainer import LoraSettings, QAExample, TrainReport, train_lora

__all__ = [
    "ConsolidationConfig",
    "ConsolidationResult",
    "ConsolidationScheduler",
    "Consolidator",
    "DistillingSynthesizer",
    "HomeLock",
    "LoraSettings",
    "PassSummary",
    "QAExample",
    "RunHistory",
    "RunRecord",
    "ScheduleConfig",
    "TemplateSynthesizer",
    "TrainReport",
    "run_pass",
    "run_scheduled",
    "train_lora",
]
