"""Batched, length-sorted, left-padded generation with a resumable JSONL cache.

Cache key: (checkpoint id, rendered prompt text, generation settings, sample index).
A killed evaluation re-run into the same directory regenerates nothing already written.

Under ``accelerate launch`` the prompts still to do are split across ranks; each rank appends to its own
cache shard (``generations.rank<i>.jsonl``) and every rank reads all shards back after a barrier, so rank 0
sees every answer. A vLLM backend (``generation.backend=vllm``, or ``auto`` with vLLM and CUDA) produces the
same rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from safetune.core.checks import check_fields
from safetune.core.compiling import check_compile_setting, compile_model
from safetune.core.config import ConfigError
from safetune.core.errors import EnvironmentProblem, InputError
from safetune.core.precision import REQUESTS, PrecisionError, decide_for_model, weights_in
from safetune.core.ranges import GENERATION_RANGES
from safetune.core.schema import EvalPrompt, Generation, content_hash
from safetune.eval.prefill import (  # noqa: F401  (re-exported: the names tests and callers know)
    CHUNK_TOKENS,
    MIN_SHARED_PREFIX,
    common_prefix_length,
    prefill_inputs,
)

log = logging.getLogger(__name__)


BACKENDS = ("hf", "vllm", "auto")


@dataclass
class GenerationSettings:
    max_new_tokens: int = field(default=48, metadata={"help": "New tokens per answer (refusals show early)."})
    batch_size: int = field(
        default=16, metadata={"help": "Prompts per generate() call (does not change outputs' cache key)."}
    )
    share_prefix: bool = field(
        default=True,
        metadata={
            "help": "Run the token prefix every prompt of a batch shares (the chat template's system turn) once and "
            "reuse its KV cache for the whole batch; same answers as without it, less prefill work (does not change "
            "outputs' cache key)."
        },
    )
    chunked_prefill: bool = field(
        default=True,
        metadata={
            "help": "Prefill each batch in chunks of rows of similar length (padded only to the chunk's longest) into "
            "one KV cache laid out as the plain left-padded batch's, with room for the answer so decoding writes in "
            "place (safetune.eval.prefill); same answers, less work (does not change outputs' cache key)."
        },
    )
    cast_weights: bool = field(
        default=True,
        metadata={
            "help": "Under bf16/fp16 autocast, hold the linear layers' weights in that dtype while generating instead "
            "of letting autocast re-cast them at every step (safetune.core.precision.weights_in); same answers, "
            "less work (does not change outputs' cache key)."
        },
    )
    compile: str | None = field(
        default=None,
        metadata={"help": "torch.compile: null, 'regions' or 'model' (safetune.core.compiling); in the key when set."},
    )
    do_sample: bool = field(default=False, metadata={"help": "Greedy when False."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    num_samples: int = field(default=1, metadata={"help": "Samples per prompt (sampling only)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    backend: str = field(
        default="hf",
        metadata={"help": "'hf' (transformers generate), 'vllm', or 'auto' (vllm when importable with CUDA)."},
    )
    prefill: str = field(
        default="",
        metadata={
            "help": "Text the answer is forced to start with (e.g. a refusal opener, for refusals in the model's own "
            "style); part of the answer and of the cache key."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "'model': generate in the weights' dtype; 'bf16': bfloat16 autocast; 'auto': bf16 autocast for "
            "fp32 weights on a device with native bf16 (AVX512-BF16/AMX CPUs ~1.45x faster; bf16 GPUs), else "
            "'model' (safetune.core.precision). Part of the cache key (resolved), so answers generated at different "
            "precisions are never mixed."
        },
    )

    @classmethod
    def from_cfg(cls, cfg: Any) -> GenerationSettings:
        """Settings from the ``generation`` config, each value checked for type and range (errors name the key)."""
        d = {k: v for k, v in dict(cfg or {}).items() if k in cls.__dataclass_fields__}
        check_fields(d, cls, prefix="generation", ranges=GENERATION_RANGES)
        for key, allowed in (("backend", BACKENDS), ("precision", REQUESTS)):
            if key in d and d[key] not in allowed:
                raise ConfigError(f"generation.{key}={d[key]!r}; expected one of {', '.join(allowed)}.")
        if "compile" in d:
            d["compile"] = check_compile_setting(d["compile"], {}, "generation.compile")[0]
        return cls(**d)

    def sampling(self) -> dict[str, Any]:
        """The keyword arguments :func:`generate_texts` takes from these settings."""
        keys = (
            "max_new_tokens",
            "batch_size",
            "do_sample",
            "temperature",
            "top_p",
            "seed",
            "precision",
            "share_prefix",
            "chunked_prefill",
            "cast_weights",
            "compile",
        )
        return {k: getattr(self, k) for k in keys}

    def key(self) -> str:
        d = asdict(self)
        d.pop("batch_size")
        d.pop("share_prefix")
        d.pop("chunked_prefill")
        d.pop("cast_weights")
        if d["compile"] is None:
            d.pop("compile")  # keys of eager answers stay what they were
        if not d["prefill"]:
            d.pop("prefill")  # keys of answers without a prefill stay what they were
        if d.pop("backend") == "vllm":  # vLLM kernels can differ numerically: keep its answers apart
            d["backend"] = "vllm"
            d.pop("precision")  # vLLM runs the checkpoint's own dtype
        if not self.do_sample:
            for k in ("temperature", "top_p", "num_samples", "seed"):
                d.pop(k)
        return content_hash(d)[:16]


class GenerationCache:
    """Append-only JSONL of generations (plus per-rank shards); each batch is flushed as soon as it finishes."""

    def __init__(self, path: str | os.PathLike[str], shard: int | None = None):
        self.path = Path(path)
        self.shard = shard
        self.entries: dict[str, dict[str, Any]] = {}
        self.reload()

    @property
    def write_path(self) -> Path:
        if self.shard is None:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{self.shard}{self.path.suffix}")

    def files(self) -> list[Path]:
        shards = sorted(self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}"))
        return [p for p in [self.path, *shards] if p.is_file()]

    def reload(self) -> None:
        for f in self.files():
            good_end = 0
            with open(f, "rb") as fh:
                data = fh.read()
            for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
                try:
                    row = json.loads(raw.decode("utf-8"))
                    if not raw.endswith(b"\n"):
                        raise ValueError("no newline: the write was interrupted")
                except (ValueError, UnicodeDecodeError):
                    if good_end + len(raw) >= len(data):  # the last line: an interrupted write; cut it off
                        log.warning("%s:%d: cutting a truncated cache line (interrupted write)", f, lineno)
                        os.truncate(f, good_end)
                        break
                    log.warning("%s:%d: skipping a malformed cache line", f, lineno)
                    good_end += len(raw)
                    continue
                good_end += len(raw)
                self.entries[row["key"]] = row

    @staticmethod
    def make_key(checkpoint_id: str, prompt_text: str, settings_key: str, sample: int) -> str:
        return content_hash([checkpoint_id, prompt_text, settings_key, sample])[:32]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        path = self.write_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.entries[row["key"]] = row
            f.flush()
            os.fsync(f.fileno())


def resolve_precision(precision: str, model: Any) -> str:
    """The generation precision that runs (``bf16`` autocast or ``model``), decided by :mod:`safetune.core.precision`."""
    if precision not in REQUESTS:
        raise PrecisionError(f"generation.precision={precision!r}; expected one of {', '.join(REQUESTS)}.")
    return decide_for_model(precision, model).label


def generate_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    precision: str = "model",
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    show_progress: bool = False,
    desc: str = "generate",
    strip: bool = True,
    share_prefix: bool = False,
    chunked_prefill: bool = False,
    cast_weights: bool = False,
    compile: str | None = None,
) -> list[str]:
    """Answers to rendered prompt ``texts`` (in input order): length-sorted, left-padded batches.

    ``precision``: ``model`` (the weights' dtype), ``bf16`` (bfloat16 autocast) or ``auto`` (see resolve_precision).
    ``on_batch(indices, answers)`` runs after each batch (the cache writes there, so a kill loses one batch at most).
    ``share_prefix`` (run the batch's common token prefix once) and ``chunked_prefill`` (prefill rows of similar
    length together, decode into a cache with room): see :mod:`safetune.eval.prefill`; both give the plain batch's
    answers. With neither, each batch is a plain left-padded ``generate`` call. ``cast_weights``: under autocast,
    hold the linear weights in its dtype for the call (:func:`safetune.core.precision.weights_in`; same answers).
    ``compile``: ``regions`` or ``model`` compiles the model in place, once (:mod:`safetune.core.compiling`)."""
    decided = decide_for_model(precision, model)
    if compile is not None and getattr(model, "_safetune_compile", None) is None:
        model._safetune_compile = compile_model(model, compile, {}, "generation.compile")
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    answers: list[str] = [""] * len(texts)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    device = next(model.parameters()).device
    autocast = decided.context(device.type)
    bar = tqdm(total=len(texts), desc=desc, unit="ans", disable=not show_progress or not texts)
    held = weights_in(model, decided, frozen_only=False) if cast_weights else contextlib.nullcontext()
    try:
        with held:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = None
                if share_prefix or chunked_prefill:
                    ids = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in idx]
                    with torch.inference_mode(), autocast:
                        enc = prefill_inputs(
                            model,
                            ids,
                            tokenizer.pad_token_id,
                            device,
                            share_prefix=share_prefix,
                            room=max_new_tokens,
                            chunk_tokens=CHUNK_TOKENS if chunked_prefill else sys.maxsize,
                        )
                if enc is None:
                    enc = tokenizer(
                        [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
                    )
                    enc = {k: v.to(device) for k, v in enc.items()}
                kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new_tokens,
                    "do_sample": do_sample,
                    "pad_token_id": tokenizer.pad_token_id,
                }
                if do_sample:
                    torch.manual_seed(seed + start)
                    kwargs.update(temperature=temperature, top_p=top_p)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                with torch.inference_mode(), autocast:
                    out = model.generate(**enc, **kwargs)
                batch_answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                batch_answers = [a.strip() if strip else a.rstrip() for a in batch_answers]
                for i, a in zip(idx, batch_answers):
                    answers[i] = a
                if on_batch is not None:
                    on_batch(idx, batch_answers)
                bar.update(len(idx))
    finally:
        tokenizer.padding_side = pad_side
        bar.close()
    return answers


def use_vllm(settings: GenerationSettings) -> bool:
    if settings.backend == "hf":
        return False
    import importlib.util

    available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if settings.backend == "vllm" and not available:
        raise EnvironmentProblem(
            "generation.backend=vllm but vLLM is not installed or no CUDA GPU is visible; "
            "pip install vllm, or use generation.backend=hf."
        )
    if settings.backend not in ("auto", "vllm"):
        raise InputError(f"generation.backend={settings.backend!r}; expected hf, vllm or auto.")
    return available


def vllm_generate_texts(
    model_dir: str, texts: list[str], settings: GenerationSettings, samples: int
) -> list[list[str]]:
    """vLLM answers (``samples`` per text) from a checkpoint directory; same text as the HF path produces."""
    from vllm import LLM, SamplingParams  # guarded by use_vllm()

    llm = LLM(model=model_dir, trust_remote_code=False, seed=settings.seed)
    params = SamplingParams(
        n=samples,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
    )
    outs = llm.generate(texts, params)
    return [[c.text.strip() for c in o.outputs] for o in outs]


def generate(
    model: Any,
    tokenizer: Any,
    formatter: Any,
    prompts: list[EvalPrompt],
    settings: GenerationSettings,
    cache: GenerationCache,
    checkpoint_id: str,
    *,
    show_progress: bool = True,
    vllm_model_dir: Callable[[], str] | None = None,
    split_across_processes: bool = True,
) -> tuple[list[Generation], int]:
    """Generate answers for ``prompts`` (skipping cached ones). Returns (generations in prompt order, n_generated).

    Under several processes each rank generates its share of what is missing; all ranks return the full list.
    ``split_across_processes=False``: this process generates everything alone (a rank-0-only caller such as the
    in-training callback, which the other ranks do not join).
    """
    from accelerate import PartialState

    state = PartialState()
    split = split_across_processes and state.num_processes > 1
    # Key on what actually runs: backend=auto resolves to vllm or hf, precision=auto to bf16 or model.
    with_vllm = use_vllm(settings)
    settings = replace(settings, backend="vllm" if with_vllm else "hf")
    if model is not None and not with_vllm:
        settings = replace(settings, precision=resolve_precision(settings.precision, model))
    skey = settings.key()
    samples = settings.num_samples if settings.do_sample else 1
    texts: dict[tuple[str, str], str] = {}
    todo: list[tuple[str, EvalPrompt, str, int]] = []
    for p in prompts:
        text = formatter.render_prompt(p.prompt) + settings.prefill
        texts[(p.suite, p.id)] = text
        for s in range(samples):
            key = GenerationCache.make_key(checkpoint_id, text, skey, s)
            if key not in cache:
                todo.append((key, p, text, s))
    n_todo = len(todo)
    if split:
        cache.shard = state.process_index
        with state.split_between_processes(todo) as mine:
            todo = list(mine)

    def row(key: str, p: EvalPrompt, s: int, answer: str) -> dict[str, Any]:
        answer = (settings.prefill + answer).strip() if settings.prefill else answer
        return {
            "key": key,
            "prompt_id": p.id,
            "suite": p.suite,
            "sample": s,
            "checkpoint": checkpoint_id,
            "settings_key": skey,
            "response": answer,
        }

    if todo and with_vllm:
        if vllm_model_dir is None:
            raise RuntimeError("the vLLM backend needs a checkpoint directory; use generation.backend=hf here.")
        uniq = list(dict.fromkeys(t for _, _, t, _ in todo))
        outs = dict(zip(uniq, vllm_generate_texts(vllm_model_dir(), uniq, settings, samples)))
        cache.add_many([row(k, p, s, outs[t][s]) for k, p, t, s in todo])
    elif todo:
        # One text per (prompt, sample); samples differ through the seed offset of their batch.
        def on_batch(idx: list[int], answers: list[str]) -> None:
            cache.add_many([row(todo[i][0], todo[i][1], todo[i][3], a) for i, a in zip(idx, answers)])

        generate_texts(
            model,
            tokenizer,
            [t for _, _, t, _ in todo],
            **settings.sampling(),
            on_batch=on_batch,
            strip=not settings.prefill,
            show_progress=show_progress and state.is_local_main_process,
            desc=f"generate [{checkpoint_id[:24]}]",
        )
    if split:
        state.wait_for_everyone()
        cache.reload()
    gens = []
    for p in prompts:
        for s in range(samples):
            r = cache.get(GenerationCache.make_key(checkpoint_id, texts[(p.suite, p.id)], skey, s))
            gens.append(
                Generation(
                    prompt_id=p.id,
                    suite=p.suite,
                    checkpoint=checkpoint_id,
                    response=r["response"],
                    settings_key=skey,
                    sample=s,
                )
            )
    return gens, n_todo
