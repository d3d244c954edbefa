"""A shared on-disk cache of reference log-probabilities, reused across runs, sweep jobs and rounds, row by row.

DPO needs the reference model's summed log-prob of every chosen and rejected answer. They depend on the
reference weights, the tokenised row (data content, chat template, tokenizer) and the truncation settings,
but not on beta, the loss type or the learning rate. So a sweep over those computes them once, and a run whose data
shares rows with an earlier run computes only its new rows:

    row key = sha256(model identity, template, max_length/truncation, precision, versions) + sha256(row's token ids)

Entries are ``<dir>/<parts>-<rows>.safetensors`` (two float32 vectors) plus ``<parts>-<rows>.json`` (what went into
the key and the row keys in order). Change anything that affects the numbers and the key changes, so they are
recomputed; the token ids are hashed, so even a change the config does not name (a new tokenizer file) cannot reuse
stale values. Files are written atomically (temp file + rename) by rank 0; other ranks wait and read.
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


def row_keys(dataset: Any) -> list[str]:
    """One hash per tokenised row (prompt, chosen and rejected token ids): what the reference scores for that row."""
    cols = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    if not cols:
        raise ValueError(
            f"Cannot key the reference cache: dataset has none of {TOKEN_COLUMNS} (columns: {dataset.column_names})."
        )
    data = [dataset[c] for c in cols]
    return [hashlib.sha256(json.dumps([col[i] for col in data]).encode()).hexdigest()[:32] for i in range(len(dataset))]


@dataclass
class RefLogpCache:
    """Reference log-probs on disk, per row, keyed by everything that changes them.

    Rows are keyed by ``(model identity, template, truncation, precision, versions)`` plus the row's own token ids, so a
    run whose data shares rows with an earlier run (a new on-policy round on top of the previous rounds' pairs, a
    source added or a ``max_rows`` raised) computes the reference pass for its new rows only. Each computation adds one
    entry: ``<parts>-<rows>.safetensors`` (two float32 vectors) and ``<parts>-<rows>.json`` (what went into the key and
    the row keys, in order).
    """

    dir: Path = field(metadata={"help": "Cache directory (ref_cache.dir); shared by runs and sweep jobs."})
    key_parts: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Model identity, data content hash, template, max_length/truncation and TRL version."},
    )
    hits: list[str] = field(default_factory=list, metadata={"help": "Splits served from the cache in this run."})
    misses: list[str] = field(
        default_factory=list, metadata={"help": "Splits with rows computed (and stored) in this run."}
    )
    rows_reused: int = field(default=0, metadata={"help": "Rows whose reference log-probs came from the cache."})
    rows_computed: int = field(default=0, metadata={"help": "Rows whose reference log-probs were computed."})

    def reference_key(self) -> str:
        """The hash of everything but the rows (the data's content hash is left out: each row is keyed by its tokens):
        the reference weights and how they score. Also names TRL's own reference-pass file (``trl_ext.reference_hash``)."""
        return "safetune-ref-" + _sha({k: v for k, v in self.key_parts.items() if k != "data_content_hash"})

    def parts_key(self) -> str:
        """The short form of :meth:`reference_key` that names this cache's entries."""
        return self.reference_key().removeprefix("safetune-ref-")[:16]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.safetensors", self.dir / f"{key}.json"

    def load_rows(self) -> dict[str, tuple[float, float]]:
        """Every stored row of this key's entries: row key -> (chosen, rejected) reference log-probs."""
        from safetensors.torch import load_file

        found: dict[str, tuple[float, float]] = {}
        if not self.dir.is_dir():
            return found
        for meta_path in sorted(self.dir.glob(f"{self.parts_key()}-*.json")):
            tensors_path = meta_path.with_suffix(".safetensors")
            try:
                keys = json.loads(meta_path.read_text())["row_keys"]
                t = load_file(str(tensors_path))
                chosen, rejected = t["ref_chosen_logps"].tolist(), t["ref_rejected_logps"].tolist()
            except (OSError, ValueError, KeyError) as e:  # a torn or foreign entry: recompute its rows
                log.warning("Reference cache entry %s unreadable (%s); its rows are recomputed.", tensors_path, e)
                continue
            if not (len(keys) == len(chosen) == len(rejected)):
                log.warning("Reference cache entry %s has mismatched lengths; its rows are recomputed.", tensors_path)
                continue
            found.update(zip(keys, zip(chosen, rejected, strict=True), strict=True))
        return found

    def store(self, key: str, split: str, keys: list[str], chosen: list[float], rejected: list[float]) -> None:
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
        meta = {"split": split, "rows": len(chosen), **self.key_parts, "row_keys": keys}
        meta_tmp = meta_path.with_name(f".{meta_path.name}.tmp{os.getpid()}")
        meta_tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(meta_tmp, meta_path)

    def stored_fraction(self, dataset: Any) -> float:
        """The share of ``dataset``'s rows whose reference log-probs are on disk."""
        keys = row_keys(dataset)
        if not keys:
            return 1.0
        stored = self.load_rows()
        return sum(k in stored for k in keys) / len(keys)

    def attach(self, dataset: Any, split: str, compute: Callable[[Any], Any], accelerator: Any) -> Any:
        """Return ``dataset`` with ``ref_chosen_logps``/``ref_rejected_logps`` columns.

        Rows found on disk are read; ``compute(subset)`` (a dataset with those columns added) runs on the others only,
        and they are stored as a new entry.
        """
        from datasets import Dataset, concatenate_datasets

        keys = row_keys(dataset)
        stored = self.load_rows()
        missing = [i for i, k in enumerate(keys) if k not in stored]
        if accelerator.num_processes > 1:
            # Rank 0 decides which rows to compute: an entry appearing mid-check (a parallel sweep job) must not split
            # the ranks, since computing runs collective operations.
            from accelerate.utils import broadcast_object_list

            shared = [missing]
            broadcast_object_list(shared, from_process=0)
            missing = shared[0]
            if any(keys[i] not in stored for i in set(range(len(keys))) - set(missing)):
                stored = self.load_rows()
                if any(keys[i] not in stored for i in set(range(len(keys))) - set(missing)):
                    raise InputError(
                        f"Reference cache {self.dir}: rank 0 read rows this rank cannot find.",
                        hint="put ref_cache.dir on a filesystem every rank sees, or ref_cache.enabled=false",
                    )
        chosen = [stored[k][0] if k in stored else 0.0 for k in keys]
        rejected = [stored[k][1] if k in stored else 0.0 for k in keys]
        self.rows_reused += len(keys) - len(missing)
        self.rows_computed += len(missing)
        if not missing:
            self.hits.append(split)
            log.info("Reference log-probs for %s (%d rows) read from the cache (%s)", split, len(keys), self.dir)
        else:
            subset = dataset if len(missing) == len(keys) else dataset.select(missing)
            out = compute(subset)
            new_c, new_r = list(out["ref_chosen_logps"]), list(out["ref_rejected_logps"])
            for j, i in enumerate(missing):
                chosen[i], rejected[i] = new_c[j], new_r[j]
            self.misses.append(split)
            if accelerator.is_main_process:
                new_keys = [keys[i] for i in missing]
                entry = f"{self.parts_key()}-{_sha(new_keys)[:16]}"
                self.store(entry, split, new_keys, new_c, new_r)
                log.info(
                    "Reference log-probs for %s: %d rows computed and stored (%s), %d read from the cache",
                    split,
                    len(missing),
                    self.paths(entry)[0],
                    len(keys) - len(missing),
                )
            accelerator.wait_for_everyone()
            if len(missing) == len(keys):
                return out
        cols = Dataset.from_dict({"ref_chosen_logps": chosen, "ref_rejected_logps": rejected})
        return concatenate_datasets([dataset, cols], axis=1)


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
