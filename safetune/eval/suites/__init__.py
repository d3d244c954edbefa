"""Evaluation prompt suites: bundled (project-written) and public ones, mapped onto the taxonomy.

One module per suite (``bundled``, ``xstest``, ``advbench``, ``harmbench``, ``jbb``, ``pku``); each has a
``load(path, *, name, **options) -> list[EvalPrompt]``. A suite config (``conf/eval/suite/*.yaml``) lists
``suites:``, each a ``_target_`` node Hydra instantiates, e.g.::

    suites:
      - {_target_: safetune.eval.suites.xstest.load, name: xstest, path: walledai/XSTest, split: test}
"""

from __future__ import annotations

import logging
from typing import Any

from safetune.core.config import ConfigError, instantiate, legacy_target, to_plain
from safetune.core.schema import EvalPrompt

log = logging.getLogger(__name__)

__all__ = ["load_suite", "load_suites", "limit_per_group", "report_group", "LEGACY_LOADERS"]

# The ``loader:`` names of earlier configs -> their ``_target_`` (deprecated; still accepted with a warning).
LEGACY_LOADERS = {
    "bundled": "safetune.eval.suites.bundled.load",
    "jsonl": "safetune.eval.suites.bundled.load_jsonl",
    "custom": "safetune.eval.suites.bundled.load_jsonl",
    "xstest": "safetune.eval.suites.xstest.load",
    "advbench": "safetune.eval.suites.advbench.load",
    "harmbench": "safetune.eval.suites.harmbench.load",
    "jbb": "safetune.eval.suites.jbb.load",
    "jbb_artifacts": "safetune.eval.suites.jbb.load_artifacts",
    "pku": "safetune.eval.suites.pku.load",
}


def report_group(p: EvalPrompt) -> str:
    """Reporting group of a prompt (harmful -> category, else its type; benign -> type): ``p.group``."""
    return p.group


def load_suite(spec: dict[str, Any]) -> list[EvalPrompt]:
    """Instantiate one suite node (``_target_`` plus ``name``, ``path`` and the loader's options)."""
    spec = {k: v for k, v in dict(to_plain(spec)).items() if v is not None}
    spec["_target_"] = legacy_target(spec, LEGACY_LOADERS, what="suite", default="jsonl")
    spec.pop("loader", None)
    spec.setdefault("name", spec["_target_"].rsplit(".", 2)[-2])
    return list(instantiate(spec))


def load_suites(suite_cfg: Any, limit: int | None = None) -> list[EvalPrompt]:
    """Every suite of an ``eval.suite`` config (``{suites: [...]}``), cut to ``limit`` prompts per group."""
    prompts: list[EvalPrompt] = []
    for spec in to_plain(suite_cfg)["suites"]:
        prompts.extend(load_suite(spec))
    return limit_per_group(prompts, limit)


def limit_per_group(prompts: list[EvalPrompt], n: int | None) -> list[EvalPrompt]:
    """Keep the first ``n`` prompts (by id) of each (suite, group): a deterministic, stratified subset
    (``None``: all prompts)."""
    if n is None:
        return prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"limit_per_group={n!r}: expected a whole number >= 1, or null for every prompt.",
            hint="limit_per_group=null evaluates all prompts",
        )
    seen: dict[tuple[str, str], int] = {}
    out = []
    for p in sorted(prompts, key=lambda p: (p.suite, p.group, p.id)):
        k = (p.suite, p.group)
        if seen.get(k, 0) < n:
            seen[k] = seen.get(k, 0) + 1
            out.append(p)
    return out
