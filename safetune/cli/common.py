"""What every entry point shares: composing configs, checking them before work, and deprecated override aliases."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

from safetune import CONF_DIR
from safetune.core.config import check_targets

log = logging.getLogger(__name__)

_LEGACY_SOURCE = {
    "triplets": "safetune.data.sources.triplets.load",
    "pku_saferlhf": "safetune.data.sources.pku_saferlhf.load",
    "hh_rlhf": "safetune.data.sources.hh_rlhf.load",
}

# (pattern, replacement or function, what to write instead) for command-line overrides of earlier releases.
_ALIASES: list[tuple[re.Pattern[str], Any, str]] = [
    (re.compile(r"^([+~]*)eval\.rubric\.judge\.(.+)$"), r"\1eval.rubric.\2", "eval.rubric.<key>=..."),
    (re.compile(r"^eval\.rubric\.scorer=(rules|llm)$"), r"eval/rubric=\1", "eval/rubric=rules|llm"),
    (re.compile(r"^experiment=null$"), "experiment=none", "experiment=none (or leave it out)"),
    (
        re.compile(r"^([+~]*)data\.sources\.(\d+)\.loader=(triplets|pku_saferlhf|hh_rlhf)$"),
        lambda m: f"{m.group(1)}data.sources.{m.group(2)}._target_={_LEGACY_SOURCE[m.group(3)]}",
        "data.sources.N._target_=safetune.data.sources.<name>.load",
    ),
]


def rewrite_aliases(overrides: list[str]) -> list[str]:
    """Deprecated override spellings -> current ones, each with a deprecation warning naming the new spelling."""
    out = []
    for o in overrides:
        new = o
        for rx, repl, hint in _ALIASES:
            if rx.match(o):
                new = rx.sub(repl, o)
                msg = f"override {o!r} is deprecated; use {hint} (now read as {new!r})."
                warnings.warn(msg, DeprecationWarning, stacklevel=2)
                log.warning(msg)
                break
        out.append(new)
    return out


def rewrite_argv() -> None:
    """Apply :func:`rewrite_aliases` to this process's command line (before Hydra parses it)."""
    sys.argv = [sys.argv[0], *rewrite_aliases(sys.argv[1:])]


def check_config(cfg: Any) -> None:
    """The checks that run right after composition, before any data or model loads."""
    check_targets(cfg, CONF_DIR)


def compose(config_name: str, overrides: list[str]) -> Any:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` outside a Hydra app, then check it."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = _compose(config_name, overrides=rewrite_aliases(list(overrides)))
    check_config(cfg)
    return cfg
