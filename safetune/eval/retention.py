"""Capability retention: what safety tuning cost in helpfulness.

Likelihood-based (cheap, offline, no generation):

- :func:`helpful_loglik`: mean per-token log-likelihood of reference helpful answers given their prompts;
- :func:`preference_accuracy`: does the checkpoint still give the more helpful hh-rlhf answer the higher
  likelihood than the less helpful one?

Responses are tokenised exactly as training sees them (:meth:`ChatFormatter.tokenize_like_trl`: the prompt
rendered with the generation prompt, the full conversation rendered, the completion starting where they stop
agreeing), so the scored tokens are the completion tokens DPO trains on (including the template's end-of-turn).

Generation-based answer statistics live in :mod:`safetune.eval.metrics` (``answer_stats``).

:func:`run_retention` runs the likelihood metrics of the configured retention sets (``_target_`` plugins:
:class:`HelpfulReference`, :class:`HHHelpfulPairs`) for one loaded checkpoint; :func:`compare_retention` turns a
base and another checkpoint's results into deltas with paired bootstrap intervals (:func:`retention_report`).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetune.core.config import cfg_get, instantiate, to_plain
from safetune.core.errors import InputError, MissingInputError
from safetune.core.formatting import ChatFormatter
from safetune.core.runs import write_json
from safetune.core.schema import Message, PreferenceExample, SchemaError, as_messages
from safetune.data.io import iter_file_rows, suite_dir
from safetune.data.sources import hh_rlhf
from safetune.eval.stats import bootstrap_mean_ci, mcnemar_exact, rate, t_mean_ci

log = logging.getLogger(__name__)

HELPFUL_REFERENCE = "helpful_reference.jsonl"


# --------------------------------------------------------------------------------------------------- likelihoods


def _completion_ids(formatter: ChatFormatter, messages: list[Message], response: str) -> tuple[list[int], int]:
    """Token ids of prompt+response and the index where the response's tokens start (as TRL splits them)."""
    row = {
        "prompt": formatter.prompt_messages(messages),
        "chosen": [{"role": "assistant", "content": response}],
        "rejected": [{"role": "assistant", "content": response}],
    }
    tp = formatter.tokenize_like_trl(row)
    return tp.prompt_chosen_ids, tp.split


def _scored(logits: torch.Tensor, encoded: tuple[list[int], int]) -> tuple[float, int]:
    """``(sum of log p, count)`` of one row's response tokens from its logits (in fp32, one row at a time: a batch's
    fp32 log-softmax over the vocabulary would be 8 x 1,024 x 49,152 x 4 bytes = 1.6 GB on SmolLM2)."""
    ids, split = encoded
    start = max(split, 1)  # the first token has nothing to be predicted from
    rows = logits[start - 1 : len(ids) - 1].float()  # the positions that predict the response tokens
    target = torch.tensor(ids[start:], device=rows.device)
    logp = rows.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(rows, dim=-1)
    return float(logp.sum()), len(ids) - start


def response_logprobs(
    model: Any,
    tokenizer: Any,
    formatter: ChatFormatter,
    pairs: Sequence[tuple[list[Message], str]],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
) -> list[tuple[float, int]]:
    """``(sum of log p(response tokens | prompt), number of response tokens)`` for each (messages, response).

    Batched (longest first, right-padded), under ``torch.inference_mode``. Sequences longer than ``max_length``
    lose prompt tokens from the left first, then response tokens from the right.
    """
    if batch_size < 1:
        raise InputError(f"eval.retention.batch_size must be >= 1, got {batch_size}.")
    encoded: list[tuple[list[int], int]] = []
    for i, (messages, response) in enumerate(pairs):
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"retention pair {i}: the response is empty; expected reference answer text.")
        ids, split = _completion_ids(formatter, messages, response)
        if split >= len(ids):
            raise ValueError(f"retention pair {i}: the chat template rendered no response tokens.")
        if len(ids) > max_length:
            drop = min(len(ids) - max_length, split - 1)  # keep at least one prompt token to predict from
            ids, split = ids[drop:], split - drop
            ids = ids[:max_length]
        encoded.append((ids, split))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                width = max(len(encoded[i][0]) for i in idx)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                attn = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids = encoded[i][0]
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    attn[row, : len(ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits
                for row, i in enumerate(idx):
                    out[i] = _scored(logits[row], encoded[i])
                del logits
    finally:
        model.train(was_training)
    return out


def helpful_loglik(
    model: Any, tokenizer: Any, formatter: ChatFormatter, pairs: Sequence[tuple[list[Message], str]], **kw: Any
) -> list[float]:
    """Per example: mean per-token log-likelihood of the response given the prompt (higher = more likely).

    ``kw``: ``batch_size`` and ``max_length`` of :func:`response_logprobs`."""
    return [s / n for s, n in response_logprobs(model, tokenizer, formatter, pairs, **kw)]


def preference_accuracy(
    model: Any,
    tokenizer: Any,
    formatter: ChatFormatter,
    examples: Sequence[PreferenceExample],
    *,
    batch_size: int = 8,
    normalise: str = "mean",
    max_length: int = 1024,
) -> list[bool]:
    """Per pair: is the chosen reply more likely than the rejected one? ``normalise``: 'mean' (per-token mean
    log-likelihood, not biased toward short replies) or 'sum' (total log-likelihood, as DPO's implicit reward).
    Ties count as False."""
    if normalise not in ("mean", "sum"):
        raise InputError(f"eval.retention.normalise={normalise!r}; expected 'mean' or 'sum'.")
    pairs = [(ex.prompt, ex.chosen) for ex in examples] + [(ex.prompt, ex.rejected) for ex in examples]
    lp = response_logprobs(model, tokenizer, formatter, pairs, batch_size=batch_size, max_length=max_length)
    vals = [s / n if normalise == "mean" else s for s, n in lp]
    k = len(examples)
    return [vals[i] > vals[k + i] for i in range(k)]


# --------------------------------------------------------------------------------------------------- deltas


def retention_report(
    base_values: Sequence[float | bool],
    other_values: Sequence[float | bool],
    *,
    kind: str = "loglik",
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired change from the base model to another checkpoint on the same examples (same order).

    ``kind='loglik'`` (per-example floats) returns::

        {"kind", "n", "base": mean, "other": mean, "delta": other - base,
         "ci_low", "ci_high": paired bootstrap percentile interval of the mean delta (seeded),
         "t_ci": [low, high] paired t-interval, "method": "paired bootstrap"}

    ``kind='accuracy'`` (per-pair bools) returns the same keys with base/other as rates, plus
    ``"base_rate"`` / ``"other_rate"`` (:func:`safetune.eval.metrics.rate` dicts with Wilson intervals),
    ``"b"`` / ``"c"`` (pairs base-wrong-other-right / base-right-other-wrong) and the exact McNemar ``"p_value"``.
    """
    if kind not in ("loglik", "accuracy"):
        raise ValueError(f"kind={kind!r}; expected 'loglik' or 'accuracy'.")
    if len(base_values) != len(other_values):
        raise ValueError(
            f"retention_report needs paired values: base has {len(base_values)}, other has {len(other_values)}; "
            "score both checkpoints on the same examples (see compare_retention, which aligns by id)."
        )
    base = np.asarray(base_values, dtype=float)
    other = np.asarray(other_values, dtype=float)
    if not (np.isfinite(base).all() and np.isfinite(other).all()):
        raise ValueError("retention_report: values must be finite (got NaN or inf).")
    d = other - base
    n = len(d)
    lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, confidence=confidence)
    out: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "base": float(base.mean()) if n else float("nan"),
        "other": float(other.mean()) if n else float("nan"),
        "delta": float(d.mean()) if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "t_ci": list(t_mean_ci(d, confidence)),
        "method": "paired bootstrap",
        "confidence": confidence,
        "seed": seed,
    }
    if kind == "accuracy":
        b, c = int(((base == 0) & (other == 1)).sum()), int(((base == 1) & (other == 0)).sum())
        out.update(
            base_rate=rate(int(base.sum()), n),
            other_rate=rate(int(other.sum()), n),
            b=b,
            c=c,
            p_value=mcnemar_exact(b, c),
        )
    return out


# --------------------------------------------------------------------------------------------------- sets


class HelpfulReference:
    """Project-written helpful Q/A (bundled ``helpful_reference.jsonl``, or ``path``): mean per-token
    log-likelihood of each reference answer."""

    name = "helpful_reference"

    def __init__(self, path: str | None = None, max_rows: int | None = None):
        self.path = path
        self.max_rows = max_rows

    def rows(self) -> list[dict[str, Any]]:
        return load_helpful_reference(self.path, self.max_rows)

    def score(self, model: Any, tok: Any, fmt: ChatFormatter, opts: dict[str, Any]) -> dict[str, Any]:
        rows = self.rows()
        pairs = [(r["prompt"], r["response"]) for r in rows]
        ll = helpful_loglik(model, tok, fmt, pairs, batch_size=opts["batch_size"], max_length=opts["max_length"])
        return {"ids": [r["id"] for r in rows], "loglik": ll, "loglik_mean": _mean(ll), "n": len(ll)}


class HHHelpfulPairs:
    """hh-rlhf helpful-base pairs (a local ``.jsonl.gz`` or, with ``path`` null, hub ``Anthropic/hh-rlhf``): the
    log-likelihood of the chosen (more helpful) replies and preference accuracy (chosen likelier than rejected)."""

    name = "hh_rlhf_helpful"

    def __init__(self, path: str | None = None, split: str = "test", max_rows: int | None = 64):
        self.path = path
        self.split = split
        self.max_rows = max_rows

    def score(self, model: Any, tok: Any, fmt: ChatFormatter, opts: dict[str, Any]) -> dict[str, Any]:
        exs = load_hh_helpful(self.path, split=self.split, max_rows=self.max_rows)
        bs, max_length = opts["batch_size"], opts["max_length"]
        ll = helpful_loglik(model, tok, fmt, [(e.prompt, e.chosen) for e in exs], batch_size=bs, max_length=max_length)
        pref = preference_accuracy(
            model, tok, fmt, exs, batch_size=bs, normalise=opts["normalise"], max_length=max_length
        )
        return {
            "ids": [e.id for e in exs],
            "loglik": ll,
            "loglik_mean": _mean(ll),
            "n": len(ll),
            "preference": pref,
            "preference_accuracy": rate(sum(pref), len(pref)),
        }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def load_helpful_reference(path: str | Path | None = None, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Project-written helpful Q/A (default: bundled ``helpful_reference.jsonl``) as ``{id, prompt, response}``
    with ``prompt`` a message list."""
    p = Path(path) if path else suite_dir() / HELPFUL_REFERENCE
    rows: list[dict[str, Any]] = []
    for where, row in iter_file_rows(p):
        for key in ("id", "prompt", "response"):
            if key not in row:
                raise SchemaError(
                    f"{p}:{where.rsplit(':', 1)[-1]}: missing field '{key}'; expected {{id, prompt, response}}."
                )
        if not isinstance(row["response"], str) or not row["response"].strip():
            raise SchemaError(f"{p}:{where.rsplit(':', 1)[-1]}: field 'response' must be non-empty text.")
        rows.append(
            {"id": str(row["id"]), "prompt": as_messages(row["prompt"], where=where), "response": row["response"]}
        )
        if max_rows is not None and len(rows) >= max_rows:
            break
    return rows


def load_hh_helpful(
    path: str | None = None, *, split: str = "test", max_rows: int | None = None
) -> list[PreferenceExample]:
    """hh-rlhf helpful-base pairs: a local ``.jsonl(.gz)`` path, or (``path`` None) hub ``Anthropic/hh-rlhf``
    with ``data_dir='helpful-base'``. The first ``max_rows`` parsed pairs (file order)."""
    if path:
        if not Path(path).expanduser().exists():
            raise MissingInputError(
                f"hh-rlhf helpful-base file {path} does not exist; set eval.retention.hh_rlhf.path to a "
                "helpful-base .jsonl.gz, or null to read hub Anthropic/hh-rlhf (data_dir helpful-base)."
            )
        loaded = hh_rlhf.load(str(Path(path).expanduser()), split=split, source="hh_rlhf:helpful-base")
    else:
        loaded = hh_rlhf.load(hh_rlhf.HUB_ID, data_dir="helpful-base", split=split)
    return list(loaded[:max_rows] if max_rows is not None else loaded)


def retention_sets(cfg: Any) -> list[Any]:
    """The enabled retention sets of an ``eval.retention`` config: every sub-node with a ``_target_``."""
    out = []
    for node in (to_plain(cfg) or {}).values():
        if not isinstance(node, dict) or "_target_" not in node:
            continue
        if not node.get("enabled", True):
            continue
        out.append(instantiate({k: v for k, v in node.items() if k != "enabled"}))
    return out


def run_retention(ck: Any, cfg: Any = None) -> dict[str, Any]:
    """Likelihood-based retention metrics for one :class:`~safetune.eval.checkpoints.LoadedCheckpoint`.

    ``cfg`` (a dict or DictConfig, see ``conf/eval/retention/default.yaml``)::

        batch_size: 8
        max_length: 1024
        normalise: mean            # preference comparison: 'mean' or 'sum' log-likelihood
        helpful_reference: {_target_: safetune.eval.retention.HelpfulReference, enabled: true, path: null, max_rows: null}
        hh_rlhf: {_target_: safetune.eval.retention.HHHelpfulPairs, enabled: true, path: null, split: test, max_rows: 64}

    Every sub-node with a ``_target_`` is a retention set (an object with ``name`` and ``score(model, tokenizer,
    formatter, opts)``). Returns ``{"checkpoint": label, "checkpoint_id", "sources": {name: result}}`` where each
    result is ``{"ids": [...], "loglik": [per-example mean token log-lik], "loglik_mean": float, "n": int}`` and, for
    ``hh_rlhf_helpful``, also ``"preference": [bool per pair]`` and ``"preference_accuracy"`` (a rate dict).
    """
    opts = {
        "batch_size": int(cfg_get(cfg, "batch_size", 8)),
        "max_length": int(cfg_get(cfg, "max_length", 1024)),
        "normalise": str(cfg_get(cfg, "normalise", "mean")),
    }
    out: dict[str, Any] = {"checkpoint": ck.label, "checkpoint_id": ck.checkpoint_id, "sources": {}}
    for s in retention_sets(cfg):
        out["sources"][s.name] = s.score(ck.model, ck.tokenizer, ck.formatter, opts)
    return out


def retention_for(ck: Any, ret_cfg: Any, out_dir: Path) -> dict[str, Any] | None:
    """run_retention for ``ck``, saved with its settings as ``retention.json``; reused if both are unchanged.
    None when ``eval.retention`` is absent or ``enabled: false``."""
    rc = to_plain(ret_cfg)
    if not rc or not rc.get("enabled", True):
        return None
    path = out_dir / "retention.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("config") == rc and old.get("checkpoint_id") == ck.checkpoint_id:
            log.info("retention: reusing %s", path)
            return old
    res = run_retention(ck, rc)
    res["config"] = rc
    write_json(path, res)
    return res


def retention_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The per-source means of a run_retention result (the per-example values stay in retention.json)."""
    out = {}
    for name, src in res["sources"].items():
        out[name] = {"n": src["n"], "loglik_mean": src["loglik_mean"]}
        if "preference_accuracy" in src:
            out[name]["preference_accuracy"] = src["preference_accuracy"]
    return out


def compare_retention(
    base: dict[str, Any], other: dict[str, Any], *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Deltas of ``other`` against ``base`` (both :func:`run_retention` results), aligned by example id.

    Returns ``{"base": label, "other": label, "sources": {name: {"loglik": report, "preference": report}}}``
    with :func:`retention_report` dicts; only sources (and ids) present in both are compared.
    """
    res: dict[str, Any] = {"base": base.get("checkpoint"), "other": other.get("checkpoint"), "sources": {}}
    for name, b in base["sources"].items():
        o = other["sources"].get(name)
        if o is None:
            continue
        pos = {i: k for k, i in enumerate(o["ids"])}
        common = [(k, pos[i]) for k, i in enumerate(b["ids"]) if i in pos]
        if len(common) < len(b["ids"]):
            log.warning("retention %s: %d of %d examples are in both results", name, len(common), len(b["ids"]))
        kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
        entry = {
            "loglik": retention_report([b["loglik"][k] for k, _ in common], [o["loglik"][j] for _, j in common], **kw)
        }
        if "preference" in b and "preference" in o:
            entry["preference"] = retention_report(
                [b["preference"][k] for k, _ in common], [o["preference"][j] for _, j in common], kind="accuracy", **kw
            )
        res["sources"][name] = entry
    return res
