"""Trainer callbacks: complete-checkpoint markers (safe resume) and an in-training safety signal."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from safetune.core.errors import InputError
from safetune.core.memory import release_memory
from safetune.core.runs import COMPLETE_MARKER, is_complete
from safetune.core.schema import EvalRecord
from safetune.eval.checkpoints import LoadedCheckpoint
from safetune.eval.generate import GenerationCache, GenerationSettings
from safetune.eval.judges import build_judge
from safetune.eval.metrics import summarise
from safetune.eval.pipeline import score
from safetune.eval.suites import load_suites

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mark_complete(checkpoint_dir: Path) -> None:
    """Write the completion marker last, after every file of the checkpoint is on disk (temp + rename)."""
    for f in checkpoint_dir.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    tmp = checkpoint_dir / f".{COMPLETE_MARKER}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(f"{time.time()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, checkpoint_dir / COMPLETE_MARKER)
    _fsync_dir(checkpoint_dir)


def last_complete_checkpoint(trainer_dir: str | os.PathLike[str], quarantine: bool = True) -> Path | None:
    """The newest ``checkpoint-N`` that carries the completion marker.

    Checkpoints without it were interrupted while saving; with ``quarantine`` they are renamed to
    ``incomplete-checkpoint-N-<time>`` so neither safetune nor transformers ever resumes from them.
    """
    d = Path(trainer_dir)
    if not d.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for p in d.iterdir():
        m = _CKPT.match(p.name)
        if not (m and p.is_dir()):
            continue
        if is_complete(p):
            found.append((int(m.group(1)), p))
        elif quarantine:
            target = d / f"incomplete-{p.name}-{int(time.time())}"
            log.warning("Checkpoint %s is incomplete (interrupted while saving); moved to %s", p, target.name)
            shutil.move(str(p), str(target))
    return max(found)[1] if found else None


class CompleteCheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it (model, optimizer, RNG, state)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            mark_complete(ckpt)


class ReleaseMemoryCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps, collect garbage and hand the heap's free pages back to the OS
    (core/memory.py). A step leaves tensors in reference cycles that only Python's full collection frees, and with
    ~700k live objects that collection runs rarely; meanwhile the heap grows and fragments. On the demo's training
    this holds memory flat (2.4 GB after 120 steps, instead of 3.3 GB and rising) for ~0.1 s per collection."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = int(every_n_steps)
        self.releases = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every_n_steps > 0 and state.global_step % self.every_n_steps == 0:
            release_memory()
            self.releases += 1


class SafetyEvalCallback(TrainerCallback):
    """Every ``every_n_steps``, score a small held-out slice of the harmful and benign suites through the evaluation
    pipeline (:func:`safetune.eval.pipeline.score`, the same generation, judge, records and grouping as
    ``safetune-eval``) and log per-group refusal (harmful) and over-refusal (benign) to the tracker. Rank 0 only.
    """

    def __init__(
        self,
        trainer: Any,
        tokenizer: Any,
        formatter: Any,
        suite_cfg: Any,
        judge_cfg: Any,
        *,
        every_n_steps: int,
        limit_per_group: int = 2,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        out_dir: Path | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise InputError(f"safety_callback.every_n_steps must be >= 1, got {every_n_steps}.")
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.prompts = load_suites(suite_cfg, limit_per_group)
        if not self.prompts:
            raise InputError("safety_callback: the configured suites are empty.")
        self.judge = build_judge(judge_cfg)
        self.every = every_n_steps
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.out_dir = out_dir
        self.history: list[dict[str, Any]] = []

    def records(self, model: Any, step: int) -> list[EvalRecord]:
        """Judged records of the callback's prompts at ``step`` (answers cached per step)."""
        cache_path = (self.out_dir or Path(self.trainer.args.output_dir)) / "safety_callback" / f"step-{step}.jsonl"
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        try:
            ck = LoadedCheckpoint(model, self.tokenizer, self.formatter, f"train-step-{step}", f"step-{step}")
            records, _ = score(
                ck,
                self.prompts,
                self.settings,
                GenerationCache(cache_path),
                self.judge,
                show_progress=False,
                split_across_processes=False,  # rank 0 alone: the other ranks are not in this call
            )
        finally:
            model.train(was_training)
        return records

    def evaluate_now(self, model: Any, step: int) -> dict[str, float]:
        ov = summarise(self.records(model, step))["overall"]
        out: dict[str, float] = {}
        if "harmful" in ov:
            out["safety/refusal_rate"] = ov["harmful"]["micro"]["rate"]
            for g, v in ov["harmful"]["per_category"].items():
                out[f"safety/refusal/{g}"] = v["rate"]
        if "benign" in ov:
            out["safety/over_refusal_rate"] = ov["benign"]["micro"]["rate"]
            for g, v in ov["benign"]["per_type"].items():
                out[f"safety/over_refusal/{g}"] = v["rate"]
        return out

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every or not state.is_world_process_zero:
            return
        metrics = self.evaluate_now(self.trainer.model if model is None else model, state.global_step)
        self.history.append({"step": state.global_step, **metrics})
        self.trainer.log(metrics)
