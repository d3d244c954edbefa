"""Resolve ``checkpoint=`` (base | run directory | adapter directory | model dir/hub id) to a ready model."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.core import runs
from safetune.core.errors import MissingInputError
from safetune.core.formatting import ChatFormatter
from safetune.core.hub import looks_local
from safetune.core.modeling import (
    ModelLoadError,
    ModelSpec,
    load_adapter,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    model: Any
    tokenizer: Any
    formatter: ChatFormatter
    checkpoint_id: str  # content identity used in cache keys
    label: str  # short human name


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_checkpoint(
    checkpoint: str, model_cfg: dict[str, Any], template_cfg: dict[str, Any], *, merge: bool = True
) -> LoadedCheckpoint:
    spec = ModelSpec.from_cfg(model_cfg)
    template = dict(template_cfg or {})
    adapter_dir: Path | None = None
    label = checkpoint
    if checkpoint in ("base", "", None):
        label = "base"
    else:
        p = Path(checkpoint).expanduser()
        info = runs.read_run_info(p) if p.is_dir() else None
        if info is not None:
            spec = ModelSpec.from_cfg({**model_cfg, **info["model"]})
            template = info.get("template") or template
            adapter_dir = p / info.get("adapter", "adapter") if info.get("kind") == "adapter" else None
            if info.get("kind") == "full":
                spec.name_or_path = str(p / info.get("adapter", "adapter"))
            label = p.name
        elif p.is_dir() and (p / "adapter_config.json").is_file():
            adapter_dir = p
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if base and base != spec.name_or_path and Path(base).exists():
                spec.name_or_path = base
            label = p.parent.name if p.name == "adapter" else p.name
        elif (looks_local(checkpoint) or p.exists()) and not (p / "config.json").is_file():
            raise MissingInputError(
                f"checkpoint={checkpoint!r}: not a safetune run directory ({runs.RUN_INFO}), a LoRA adapter directory "
                "(adapter_config.json) or a model directory (config.json)"
                + ("" if p.exists() else " - it does not exist")
                + ".",
                hint="checkpoint=base, a run directory written by safetune-train, or a model directory / hub id",
            )
        else:
            spec.name_or_path = checkpoint
            label = Path(checkpoint).name or checkpoint
    path = resolve_model_path(spec)
    tokenizer = load_tokenizer(spec, path)
    formatter = ChatFormatter.from_cfg(tokenizer, template)
    model = load_model(spec, path)
    if adapter_dir is not None:
        weights = adapter_dir / "adapter_model.safetensors"
        model = load_adapter(model, adapter_dir)
        if merge and not spec.load_in_4bit:
            model = model.merge_and_unload()  # faster generation, identical outputs
        ckpt_id = f"adapter:{spec.name_or_path}:{_file_digest(weights)}"
    else:
        ckpt_id = f"model:{spec.name_or_path}:{spec.revision or ''}"
    return LoadedCheckpoint(model, tokenizer, formatter, ckpt_id, label)


def vllm_model_dir(ck: LoadedCheckpoint, out_dir: Path):
    """A function giving a checkpoint directory vLLM can load: the model's own, or the merged adapter saved once
    into the eval dir (called only when the vLLM backend runs)."""

    def get() -> str:
        src = Path(str(getattr(ck.model, "name_or_path", "") or ""))
        if not ck.checkpoint_id.startswith("adapter:") and (src / "config.json").is_file():
            return str(src)
        merged = out_dir / "merged_model"
        if hasattr(ck.model, "peft_config"):  # adapters on a 4-bit base are not merged (see load_checkpoint)
            raise ModelLoadError(
                f"generation.backend=vllm needs a merged model, but {ck.checkpoint_id} is a LoRA adapter on a 4-bit "
                "base, which is not merged. Export a merged model (safetune-export run_dir=...) and evaluate that "
                "directory, or use generation.backend=hf."
            )
        if not (merged / "config.json").is_file():
            ck.model.save_pretrained(merged, safe_serialization=True)
            ck.tokenizer.save_pretrained(merged)
        return str(merged)

    return get
