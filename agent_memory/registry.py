"""AdapterRegistry: memory modules on disk, in standard peft format, with a manifest per namespace.

Layout under the registry root (``HOME/modules``)::

    USER/AGENT/manifest.json          the modules of one user/agent: ids, episodes, recall, ...
    USER/AGENT/mod_xxxx/              adapter_config.json + adapter_model.safetensors + module.json
    .staging/                         modules being written (never visible to readers)

A module becomes visible in two atomic steps: its folder is renamed out of
``.staging`` into place, then the manifest is replaced (write temp file, fsync,
``os.replace``) under an exclusive file lock. Readers only trust the manifest,
so a crash at any point leaves either the old or the new state, never half a
module; :meth:`AdapterRegistry.sweep` removes what a crash left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from agent_memory.atomic import write_json
from agent_memory.errors import AgentMemoryError, NotFoundError, ValidationError
from agent_memory.types import check_id


class BackboneMismatchError(AgentMemoryError):
    """A module was trained on another backbone than the one it is being loaded on."""


@dataclass(frozen=True)
class ModuleInfo:
    """What the manifest records about one memory module."""

    id: str
    user_id: str
    agent_id: str
    episode_ids: tuple[str, ...]
    start: str
    end: str
    centroid: tuple[float, ...]
    rank: int
    alpha: int
    facts: int
    examples: int
    train_tokens: int
    params: int
    recall: float
    weak: bool
    backbone: str
    backbone_fingerprint: str
    created_at: str
    examples_per_episode: dict[str, int] = field(default_factory=dict)
    train_seconds: float = 0.0
    episode_versions: dict[str, int] = field(default_factory=dict)
    """The version of each episode the module learned (an episode changed since is pending again)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["episode_ids"], data["centroid"] = list(self.episode_ids), list(self.centroid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModuleInfo":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["episode_ids"], data["centroid"] = tuple(data["episode_ids"]), tuple(data["centroid"])
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The fields the CLI lists."""
        return {"id": self.id, "facts": self.facts, "rank": self.rank, "recall": round(self.recall, 4), "weak": self.weak}


def check_module_id(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("mod_") or not value[4:].isalnum():
        raise ValidationError("module_id", f"{value!r} is not a module id", "pass an id from `modules list`, like mod_...")
    return value


class AdapterRegistry:
    """Memory modules of every namespace under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- writing ----------------------------------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return f"mod_{uuid.uuid4().hex[:16]}"

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder to write a module into; removed afterwards unless committed."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="mod-", dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Path, info: ModuleInfo) -> ModuleInfo:
        """Make a staged module visible: folder into place, then the manifest entry."""
        check_id("user_id", info.user_id)
        check_id("agent_id", info.agent_id)
        check_module_id(info.id)
        if not (staged / "adapter_config.json").is_file():
            raise ValidationError("staged", f"{staged} holds no adapter_config.json", "save the peft adapter first")
        (staged / "module.json").write_text(json.dumps(info.to_dict(), indent=1))
        target = self._dir(info.user_id, info.agent_id) / info.id
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            os.rename(staged, target)
            modules = self._read(info.user_id, info.agent_id)
            modules.append(info)
            self._write(info.user_id, info.agent_id, modules)
        return info

    def delete(self, module_id: str, *, quarantine: str | None = None) -> ModuleInfo:
        """Remove a module from its manifest, then its folder.

        With ``quarantine`` (the reason), the folder is moved to ``.quarantine/`` for inspection instead.
        """
        info = self.get(module_id)
        with self._locked():
            modules = [m for m in self._read(info.user_id, info.agent_id) if m.id != module_id]
            self._write(info.user_id, info.agent_id, modules)
        folder = self._dir(info.user_id, info.agent_id) / module_id
        if quarantine is not None and folder.is_dir():
            target = self.root / ".quarantine" / f"{info.user_id}--{info.agent_id}--{module_id}-{uuid.uuid4().hex[:6]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, target)
            (target / "QUARANTINED.txt").write_text(quarantine + "\n", encoding="utf-8")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        return info

    def delete_user(self, user_id: str) -> list[str]:
        """Remove every module of one user (all agents), and nothing of anyone else's; returns their ids."""
        check_id("user_id", user_id)
        ids = [m.id for m in self.list(user_id)]
        with self._locked():
            shutil.rmtree(self.root / user_id, ignore_errors=True)
        return ids

    def quarantined(self) -> list[Path]:
        folder = self.root / ".quarantine"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def sweep(self) -> list[Path]:
        """Remove staging leftovers and module folders no manifest names (what a crash leaves)."""
        removed = []
        with self._locked():
            staging = self.root / ".staging"
            if staging.is_dir():
                for p in staging.iterdir():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
            # every agent folder, with a manifest or not: a crash between the rename and the first
            # manifest write of an agent leaves a module folder beside no manifest at all
            for folder in self.root.glob("*/*"):
                if folder.parent.name.startswith(".") or not folder.is_dir():
                    continue
                named = {m.id for m in self._read(folder.parent.name, folder.name)}
                for p in folder.glob("mod_*"):
                    if p.name not in named:
                        shutil.rmtree(p, ignore_errors=True)
                        removed.append(p)
        return removed

    # -- reading ----------------------------------------------------------------------------------
    def list(self, user_id: str, agent_id: str | None = None) -> list[ModuleInfo]:
        """Modules of a user (one agent, or all agents), oldest first."""
        check_id("user_id", user_id)
        if agent_id is not None:
            return self._read(user_id, check_id("agent_id", agent_id))
        user_dir = self.root / user_id
        agents = sorted(p.name for p in user_dir.iterdir() if p.is_dir()) if user_dir.is_dir() else []
        return sorted((m for a in agents for m in self._read(user_id, a)), key=lambda m: m.created_at)

    def get(self, module_id: str) -> ModuleInfo:
        check_module_id(module_id)
        for manifest in self.root.glob("*/*/manifest.json"):
            for m in self._read(manifest.parent.parent.name, manifest.parent.name):
                if m.id == module_id:
                    return m
        raise NotFoundError(f"module {module_id!r} does not exist; list modules with `agent-memory modules list --user U`")

    def version(self, user_id: str, agent_id: str | None = None) -> tuple:
        """Changes whenever a manifest of this user (or user/agent) is replaced: lets readers cache the list."""
        pattern = f"{agent_id}/manifest.json" if agent_id else "*/manifest.json"
        stamps = []
        for path in sorted((self.root / check_id("user_id", user_id)).glob(pattern)):
            stat = path.stat()
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino))
        return tuple(stamps)

    def path(self, info: ModuleInfo) -> Path:
        return self._dir(info.user_id, info.agent_id) / info.id

    def check_backbone(self, info: ModuleInfo, backbone) -> None:
        """Refuse a module trained on another backbone."""
        if info.backbone_fingerprint != backbone.fingerprint:
            raise BackboneMismatchError(
                f"module {info.id} was trained on {info.backbone} ({info.backbone_fingerprint}), not on "
                f"{backbone.name} ({backbone.fingerprint}); use that backbone or consolidate again"
            )

    @contextmanager
    def activated(self, backbone, info: ModuleInfo) -> Iterator[None]:
        """Answer with this module's weights on the backbone inside the block (per-call load; the router keeps modules resident)."""
        from peft import PeftModel

        self.check_backbone(info, backbone)
        path = self.path(info)
        if not (path / "adapter_config.json").is_file():
            raise NotFoundError(f"module {info.id} has no adapter files at {path}; delete it and consolidate again")
        base = backbone.model
        peft_model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
        try:
            yield
        finally:
            backbone.model = peft_model.unload()

    # -- internals --------------------------------------------------------------------------------
    def _dir(self, user_id: str, agent_id: str) -> Path:
        return self.root / user_id / agent_id

    def _read(self, user_id: str, agent_id: str) -> list[ModuleInfo]:
        path = self._dir(user_id, agent_id) / "manifest.json"
        if not path.is_file():
            return []
        data = json.loads(path.read_text(encoding="utf-8"))
        return [ModuleInfo.from_dict(m) for m in data["modules"]]

    def _write(self, user_id: str, agent_id: str, modules: list[ModuleInfo]) -> None:
        folder = self._dir(user_id, agent_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "manifest.json", {"modules": [m.to_dict() for m in modules]}, indent=1)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
