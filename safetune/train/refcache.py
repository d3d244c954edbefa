"""A shared on-disk cache of reference log-probabilities, reused across runs and sweep jobs.

DPO needs the reference model's summed log-prob of every chosen and rejected answer. They depend on the
reference weights, the tokenised rows (data content, chat template, tokenizer) and the truncation settings,
but not on beta, the loss type or the learning rate. So a sweep over those computes them once:

    key = sha256(model identity, data content hash, template, max_length/truncation, tokenised rows, split)

and stores ``<dir>/<key>.safetensors`` (two float32 vectors) plus ``<key>.json`` (what went into the key).
Change anything that affects the numbers and the key changes, so they are recomputed; the tokenised rows are
hashed too, so even a change the config does not name (a new tokenizer file) cannot reuse stale values.
Files are written atomically (temp file + rename) by rank 0; other ranks wait and read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safetune.core.errors import InputError

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(spec: dict[str, Any], model_path: str) -> dict[str, Any]:
    """What identifies the reference weights: the spec plus, for local checkpoints, a fingerprint of the files."""
    ident = {k: spec.get(k) for k in ("name_or_path", "revision", "dtype", "load_in_4bit", "attn_implementation")}
    p = Path(model_path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) + [p / "config.json"]
        ident["files"] = [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]
        ident["config_sha"] = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()
    return ident


def tokenized_hash(dataset: Any) -> str:
    """Hash of the tokenised preference rows (in order) that the reference pass reads."""
    h = hashlib.sha256()
    cols = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    if not cols:
        raise ValueError(
            f"Cannot key the reference cache: dataset has none of {TOKEN_COLUMNS} (columns: {dataset.column_names})."
        )
    for c in cols:
        h.update(c.encode())
        for row in dataset[c]:
            h.update(json.dumps(row).encode())
    return h.hexdigest()


@dataclass
class RefLogpCache:
    """Reference log-probs on disk, keyed by everything that changes them."""

    dir: Path = field(metadata={"help": "Cache directory (ref_cache.dir); shared by runs and sweep jobs."})
    key_parts: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Model identity, data content hash, template, max_length/truncation and TRL version."},
    )
    hits: list[str] = field(default_factory=list, metadata={"help": "Splits served from the cache in this run."})
    misses: list[str] = field(default_factory=list, metadata={"help": "Splits computed (and stored) in this run."})

    def key(self, dataset: Any, split: str) -> str:
        return _sha({**self.key_parts, "split": split, "tokens": tokenized_hash(dataset), "rows": len(dataset)})[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.safetensors", self.dir / f"{key}.json"

    def load(self, key: str, n_rows: int) -> tuple[list[float], list[float]] | None:
        from safetensors.torch import load_file

        tensors_path, _ = self.paths(key)
        if not tensors_path.is_file():
            return None
        t = load_file(str(tensors_path))
        chosen, rejected = t["ref_chosen_logps"], t["ref_rejected_logps"]
        if chosen.numel() != n_rows or rejected.numel() != n_rows:
            log.warning(
                "Reference cache %s has %d rows, expected %d; recomputing.", tensors_path, chosen.numel(), n_rows
            )
            return None
        return chosen.tolist(), rejected.tolist()

    def store(self, key: str, split: str, chosen: list[float], rejected: list[float]) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tensors_path, meta_path = self.paths(key)
        tmp = tensors_path.with_name(f".{tensors_path.name}.tmp{os.getpid()}")
        save_file(
            {
                "ref_chosen_logps": torch.tensor(chosen, dtype=torch.float32),
                "ref_rejected_logps": torch.tensor(rejected, dtype=torch.float32),
            },
            str(tmp),
        )
        os.replace(tmp, tensors_path)
        meta_tmp = meta_path.with_name(f".{meta_path.name}.tmp{os.getpid()}")
        meta_tmp.write_text(json.dumps({"split": split, "rows": len(chosen), **self.key_parts}, indent=2, default=str))
        os.replace(meta_tmp, meta_path)

    def attach(self, dataset: Any, split: str, compute: Callable[[], Any], accelerator: Any) -> Any:
        """Return ``dataset`` with ``ref_chosen_logps``/``ref_rejected_logps`` columns, from disk or ``compute()``."""
        from datasets import Dataset, concatenate_datasets

        key = self.key(dataset, split)
        cached = self.load(key, len(dataset))
        if accelerator.num_processes > 1:
            # Rank 0 decides hit or miss: a file appearing mid-check (a parallel sweep job) must not split the ranks,
            # since computing runs collective operations.
            from accelerate.utils import broadcast_object_list

            hit = [cached is not None]
            broadcast_object_list(hit, from_process=0)
            if hit[0] and cached is None:
                cached = self.load(key, len(dataset))
            elif not hit[0]:
                cached = None
        if cached is not None:
            self.hits.append(split)
            log.info("Reference log-probs for %s (%d rows) read from the cache (%s)", split, len(dataset), key)
            cols = Dataset.from_dict({"ref_chosen_logps": cached[0], "ref_rejected_logps": cached[1]})
            return concatenate_datasets([dataset, cols], axis=1)
        out = compute()
        self.misses.append(split)
        if accelerator.is_main_process:
            self.store(key, split, list(out["ref_chosen_logps"]), list(out["ref_rejected_logps"]))
            log.info("Reference log-probs for %s stored in the cache (%s)", split, self.paths(key)[0])
        accelerator.wait_for_everyone()
        return out


def build_ref_cache(
    cache_cfg: Any,
    *,
    model_spec: dict[str, Any],
    model_path: str,
    data_content_hash: str,
    template: Any,
    trainer_cfg: dict[str, Any],
    reference: str,
    precision: str = "fp32",
) -> RefLogpCache | None:
    """The cache for this run, or None when disabled (``ref_cache.enabled=false``) or not applicable."""
    cfg = dict(cache_cfg or {})
    if not cfg.get("enabled", True) or not trainer_cfg.get("precompute_ref_log_probs"):
        return None
    import trl

    parts = {
        "model": model_identity(model_spec, model_path),
        "reference": reference,
        "data_content_hash": data_content_hash,
        "template": template,
        "max_length": trainer_cfg.get("max_length"),
        "max_completion_length": trainer_cfg.get("max_completion_length"),
        "truncation_mode": trainer_cfg.get("truncation_mode"),
        "ld_alpha": trainer_cfg.get("ld_alpha"),
        "padding_free": trainer_cfg.get("padding_free"),
        # The reference pass runs under the trainer's autocast: bf16 and fp32 log-probs differ.
        "precision": precision,
        "trl": trl.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    if not cfg.get("dir"):
        raise InputError("ref_cache.enabled=true needs ref_cache.dir (default: ${paths.cache}/ref_logps).")
    return RefLogpCache(dir=Path(cfg["dir"]).expanduser(), key_parts=parts)
