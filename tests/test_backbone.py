"""Backbone loading and generation: tiny random models for speed, the real SmolLM2 for honesty."""

from __future__ import annotations

import shutil

import pytest
import torch

from agent_memory.backbone import EMBEDDED, Backbone, cpu_supports_bf16, resolve_dtype
from agent_memory.config import BackboneConfig
from agent_memory.errors import BackboneError, ConfigError, ValidationError


def test_loads_a_local_model_folder_and_generates(tiny_model_dir):
    backbone = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    assert backbone.name == str(tiny_model_dir)
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"
    out = backbone.generate("where did maria move", max_new_tokens=5)
    assert isinstance(out, str)
    prompt = backbone.format_chat([{"role": "user", "content": "where is the dog"}])
    assert prompt.startswith("<|im_start|> user : where is the dog") and prompt.rstrip().endswith("assistant :")


def test_generation_is_deterministic(tiny_model_dir):
    backbone = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    msgs = [{"role": "system", "content": "the dog"}, {"role": "user", "content": "what is the name"}]
    assert backbone.generate(msgs, max_new_tokens=6) == backbone.generate(msgs, max_new_tokens=6)


def test_fingerprint_identifies_the_weights(tiny_model_dir):
    a = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    b = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    assert a.fingerprint == b.fingerprint
    with torch.no_grad():
        next(b.model.parameters()).add_(1.0)
    b._fingerprint = None
    assert a.fingerprint != b.fingerprint


def test_dtype_auto_follows_the_hardware():
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == torch.float32


@pytest.mark.parametrize(
    "field,value", [("device", "tpu"), ("dtype", "int8"), ("max_new_tokens", 0), ("model", "  ")]
)
def test_bad_backbone_config(field, value):
    with pytest.raises(ConfigError) as info:
        BackboneConfig(**{field: value})
    assert info.value.field == field


def test_missing_model_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    with pytest.raises(BackboneError, match="could not load backbone"):
        Backbone.load(BackboneConfig(model=str(empty)))


@pytest.mark.parametrize(
    "messages", [[], [{"role": "wizard", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": 3}], ["hi"]]
)
def test_bad_messages(tiny_model_dir, messages):
    backbone = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    with pytest.raises(ValidationError):
        backbone.generate(messages, max_new_tokens=2)


def test_embedded_names_are_registered():
    assert EMBEDDED["default"].name == "smollm2-135m-instruct"
    assert EMBEDDED["gemma3-270m"].name == "gemma-3-270m"


@pytest.mark.slow
def test_real_smollm2_converts_once_then_loads_from_cache(tmp_path):
    """The embedded default: GGUF de-quantized on first load, cached, and answers a question it knows."""
    config = BackboneConfig(cache_dir=str(tmp_path / "cache"))
    first = Backbone.load(config)
    assert first.name == "smollm2-135m-instruct" and not first.from_cache
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "complete.json").is_file()
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")], "no temp folders left"
    again = Backbone.load(config)
    assert again.from_cache and again.load_seconds < first.load_seconds
    assert again.fingerprint == first.fingerprint
    answer = again.generate("What is the capital of France? Answer in one word.", max_new_tokens=12)
    assert "Paris" in answer
    shutil.rmtree(tmp_path / "cache")
