"""Batched, length-sorted, left-padded generation with a resumable JSONL cache.

Cache key: (checkpoint id, rendered prompt text, generation settings, sample index).
A killed evaluation re-run into the same directory regenerates nothing already written.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from safetune.schema import EvalPrompt, Generation, content_hash

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    max_new_tokens: int = field(default=48, metadata={"help": "New tokens per answer (refusals show early)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (does not change outputs' cache key)."})
    do_sample: bool = field(default=False, metadata={"help": "Greedy when False."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    num_samples: int = field(default=1, metadata={"help": "Samples per prompt (sampling only)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})

    @classmethod
    def from_cfg(cls, cfg: Any) -> GenerationSettings:
        d = dict(cfg or {})
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def key(self) -> str:
        d = asdict(self)
        d.pop("batch_size")
        if not self.do_sample:
            for k in ("temperature", "top_p", "num_samples", "seed"):
                d.pop(k)
        return content_hash(d)[:16]


class GenerationCache:
    """Append-only JSONL of generations; each line is flushed as soon as its batch finishes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s:%d: skipping a truncated cache line (interrupted write)", self.path, lineno)
                        continue
                    self.entries[row["key"]] = row

    @staticmethod
    def make_key(checkpoint_id: str, prompt_text: str, settings_key: str, sample: int) -> str:
        return content_hash([checkpoint_id, prompt_text, settings_key, sample])[:32]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.entries[row["key"]] = row
            f.flush()
            os.fsync(f.fileno())


def generate(model: Any, tokenizer: Any, formatter: Any, prompts: list[EvalPrompt], settings: GenerationSettings,
             cache: GenerationCache, checkpoint_id: str, *, show_progress: bool = True) -> tuple[list[Generation], int]:
    """Generate answers for ``prompts`` (skipping cached ones). Returns (generations in prompt order, n_generated)."""
    skey = settings.key()
    samples = settings.num_samples if settings.do_sample else 1
    todo: list[tuple[str, EvalPrompt, str, int]] = []
    texts: dict[str, str] = {}
    for p in prompts:
        text = formatter.render_prompt(p.prompt)
        texts[p.id + p.suite] = text
        for s in range(samples):
            key = GenerationCache.make_key(checkpoint_id, text, skey, s)
            if key not in cache:
                todo.append((key, p, text, s))
    # Length-sorted batches: less padding, and the same lengths together.
    lengths = {k: len(tokenizer(t, add_special_tokens=False)["input_ids"]) for k, _, t, _ in todo}
    todo.sort(key=lambda x: -lengths[x[0]])
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    bar = tqdm(total=len(todo), desc=f"generate [{checkpoint_id[:24]}]", unit="ans", disable=not show_progress or not todo)
    try:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            enc = tokenizer([t for _, _, t, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                                      "pad_token_id": tokenizer.pad_token_id}
            if settings.do_sample:
                torch.manual_seed(settings.seed + start)
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                out = model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :]
            answers = tokenizer.batch_decode(new, skip_special_tokens=True)
            cache.add_many([
                {"key": key, "prompt_id": p.id, "suite": p.suite, "sample": s, "checkpoint": checkpoint_id,
                 "settings_key": skey, "response": a.strip()}
                for (key, p, _, s), a in zip(batch, answers)
            ])
            bar.update(len(batch))
    finally:
        tokenizer.padding_side = pad_side
        bar.close()
    gens = []
    for p in prompts:
        for s in range(samples):
            row = cache.get(GenerationCache.make_key(checkpoint_id, texts[p.id + p.suite], skey, s))
            gens.append(Generation(prompt_id=p.id, suite=p.suite, checkpoint=checkpoint_id, response=row["response"],
                                   settings_key=skey, sample=s))
    return gens, len(todo)
