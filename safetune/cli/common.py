"""What every entry point shares: composing configs, checking them before work (inside the error boundary of
:mod:`safetune.cli.errors`), and deprecated override aliases."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from safetune import CONF_DIR
from safetune.cli.errors import flat_keys, guarded, strip_debug
from safetune.core.config import check_targets
from safetune.core.ranges import precheck_generation, precheck_trainer

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


def check_config(cfg: Any) -> None:
    """The checks that run right after composition, before any data or model loads: the value ranges of
    ``trainer``/``generation`` first (no heavy import: a typo fails in about a second), then every ``_target_``."""
    for group, precheck in (("trainer", precheck_trainer), ("generation", precheck_generation)):
        values = resolved(cfg, group)
        if values:
            precheck(values)
    check_targets(cfg, CONF_DIR)


def resolved(cfg: Any, key: str) -> dict[str, Any]:
    """``cfg[key]`` as a plain dict with interpolations resolved; {} when absent or not resolvable yet (missing
    values are reported by the full checks later, with their own messages)."""
    from omegaconf import DictConfig, OmegaConf

    node = cfg.get(key) if hasattr(cfg, "get") else None
    if not isinstance(node, (DictConfig, dict)):
        return {}
    try:
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    except Exception:  # an unresolvable interpolation or ??? value: left to the full checks
        return {}
    return plain if isinstance(plain, dict) else {}


# command-line flags that are Hydra's own (help, config printing, multirun): composition is left to Hydra
_HYDRA_FLAGS = ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                "--package", "-p", "--run", "-r", "--shell-completion", "-sc", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--version")  # fmt: skip


def known_keys(config_name: str) -> Callable[[], list[str]]:
    """A function listing every key of ``conf/<config_name>.yaml`` (for 'did you mean' hints)."""

    def get() -> list[str]:
        from omegaconf import OmegaConf

        return flat_keys(OmegaConf.to_container(_compose_unchecked(config_name, []), resolve=False))

    return get


def hydra_entry(
    config_name: str, run: Callable[[DictConfig], None], argv: Callable[[list[str]], list[str]] | None = None
) -> Callable[[], None]:
    """The ``main()`` of a Hydra entry point, inside the error boundary (:mod:`safetune.cli.errors`): rewrite argv
    (``argv``, then deprecated aliases), compose ``conf/<config_name>.yaml`` with the command line and check it
    (config errors exit 2 with ``error:``/``hint:`` before Hydra starts), then call ``run(cfg)``."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def _hydra_main(cfg: DictConfig) -> None:
        guarded(lambda: (check_config(cfg), run(cfg)), known_keys=known_keys(config_name))

    def main() -> None:
        args = strip_debug(sys.argv[1:])
        args = guarded(lambda: rewrite_aliases(argv(args) if argv else args))
        sys.argv = [sys.argv[0], *args]
        if not any(a.split("=", 1)[0] in _HYDRA_FLAGS for a in args):
            plain = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
            guarded(lambda: compose(config_name, plain), known_keys=known_keys(config_name))
        _hydra_main()

    return main


def _compose_unchecked(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return _compose(config_name, overrides=overrides)


def compose(config_name: str, overrides: list[str]) -> Any:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` outside a Hydra app, then check it."""
    cfg = _compose_unchecked(config_name, rewrite_aliases(list(overrides)))
    check_config(cfg)
    return cfg
