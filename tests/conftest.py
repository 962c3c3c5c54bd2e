"""Shared fixtures: the real bundled embedder, a real Chroma server, tiny random backbones."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent_memory.config import StoreConfig
from agent_memory.embedder import OnnxEmbedder
from agent_memory.store import EpisodicStore
from agent_memory.store.server import ChromaServer

BACKENDS = ["memory", "embedded", "server"]


@pytest.fixture(scope="session")
def embedder():
    """The real default embedder (all-MiniLM-L6-v2 via ONNX Runtime)."""
    return OnnxEmbedder.bundled()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` on 127.0.0.1, shared by the session; each test uses its own collections."""
    with ChromaServer(tmp_path_factory.mktemp("chroma-server")) as server:
        yield server


def make_store(kind: str, embedder, tmp_path: Path, request, config: StoreConfig | None = None) -> EpisodicStore:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = config or StoreConfig(collection_prefix=prefix)
    if kind == "memory":
        return EpisodicStore.in_memory(embedder, config)
    if kind == "embedded":
        return EpisodicStore.embedded(tmp_path / "store", embedder, config)
    server = request.getfixturevalue("chroma_server")
    return EpisodicStore.server(server.url, embedder, config)


@pytest.fixture(params=BACKENDS)
def store(request, embedder, tmp_path) -> EpisodicStore:
    """The same contract, against each backend: in-memory twin, embedded Chroma, Chroma server."""
    return make_store(request.param, embedder, tmp_path, request)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with a word-level tokenizer and a chat template, on disk."""
    from agent_memory.evals.tiny_model import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny(tiny_model_dir):
    """The tiny random backbone, loaded fresh for each test (tests may train on it)."""
    from agent_memory.backbone import Backbone
    from agent_memory.config import BackboneConfig

    return Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))


@pytest.fixture
def cli_runner(capsys):
    """``cli_runner(home)`` -> ``run(*args)`` giving (exit code, stdout, stderr) of the CLI, in process."""
    from agent_memory.cli import main

    def make(home: Path):
        def run(*args: str) -> tuple[int, str, str]:
            code = 0
            try:
                main(["--home", str(home), *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            out, err = capsys.readouterr()
            return code, out, err

        run.home = home
        return run

    return make
