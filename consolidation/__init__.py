"""Consolidation: distill episodic memory into self-tested LoRA modules."""

from agent_memory.consolidation.consolidator import ConsolidationConfig, ConsolidationResult, Consolidator
from agent_memory.consolidation.synthesis import TemplateSynthesizer
from agent_memory.consolidation.trainer import LoraSettings, QAExample, TrainReport, train_lora

__all__ = [
    "ConsolidationConfig",
    "ConsolidationResult",
    "Consolidator",
    "LoraSettings",
    "QAExample",
    "TemplateSynthesizer",
    "TrainReport",
    "train_lora",
]
