"""Config helpers shared by every stage: OmegaConf -> plain Python, key lookup, and ``_target_`` plugins.

Every swappable part (data sources, evaluation suites, judges, rubric scorers, retention sets) is a node with a
``_target_`` that Hydra instantiates. :func:`check_targets` runs right after composition (in every entry point,
before any data or model loads): a ``_target_`` that does not import fails then, naming the config key and listing
the valid targets of its slot, which are read from the shipped config groups (``conf/<group>/*.yaml``).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetune.core.errors import InputError

log = logging.getLogger(__name__)


class ConfigError(InputError):
    """A config value is invalid; the message names the key, what was expected and what was got."""


def to_plain(cfg: Any) -> Any:
    """OmegaConf containers -> plain dict/list (resolved); other values unchanged. A required value left unset
    (``???``) raises OmegaConf's ``MissingMandatoryValue`` naming its full key (e.g. ``data.sources.0.path``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cfg


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts, DictConfigs and objects; ``default`` when absent or None."""
    if cfg is None:
        return default
    v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if v is None else v


def import_target(target: str) -> Any:
    """The object a ``_target_`` string names (``package.module.attr``); ImportError/AttributeError if none."""
    module, _, attr = target.rpartition(".")
    if not module:
        raise ImportError(f"{target!r} is not a dotted path")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        # nested attributes (module.Class.method)
        parent, _, outer = module.rpartition(".")
        if not parent:
            raise
        return getattr(getattr(importlib.import_module(parent), outer), attr)


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(config key, _target_ string)`` in a (plain or OmegaConf) config tree."""
    if hasattr(node, "items"):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_" and isinstance(v, str):
                yield key, v
            else:
                yield from iter_targets(v, key)
    elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{path}.{i}")


# config key prefix -> the config group whose shipped options list the valid targets for it
_SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data.sources", ("data",)),
    ("safety_callback.suite", ("eval/suite",)),
    ("safety_callback.judge", ("eval/judge",)),
    ("eval.suite", ("eval/suite",)),
    ("eval.judge", ("eval/judge",)),
    ("eval.rubric", ("eval/rubric",)),
    ("eval.retention", ("eval/retention",)),
    ("synth", ("synth", "eval/judge", "eval/suite")),
)


def valid_targets(conf_dir: str | Path, groups: tuple[str, ...]) -> list[str]:
    """The ``_target_`` values used by the shipped options of ``groups`` (``conf/<group>/*.yaml``)."""
    import yaml

    found: set[str] = set()
    for g in groups:
        for f in sorted((Path(conf_dir) / g).glob("*.yaml")):
            try:
                data = yaml.safe_load(f.read_text()) or {}
            except yaml.YAMLError:
                continue
            found.update(t for _, t in iter_targets(data))
    return sorted(found)


def check_targets(cfg: Any, conf_dir: str | Path) -> None:
    """Raise :class:`ConfigError` for the first ``_target_`` that does not import, listing the valid ones."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):  # unresolved: mandatory values (???) may still be missing
        cfg = OmegaConf.to_container(cfg, resolve=False)
    for key, target in iter_targets(cfg):
        try:
            import_target(target)
        except (ImportError, AttributeError) as e:
            groups = next((g for prefix, g in _SLOTS if key.startswith(prefix)), ())
            valid = valid_targets(conf_dir, groups) if groups else []
            close = difflib.get_close_matches(target, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = f" Valid targets for {key.rsplit('._target_', 1)[0]}: {', '.join(valid)}." if valid else ""
            raise ConfigError(
                f"{key}={target!r} cannot be imported ({type(e).__name__}: {e}).{hint}{listing} A custom class "
                "works too if it is importable (package.module.Class)."
            ) from e


def legacy_target(spec: dict[str, Any], table: dict[str, str], *, what: str, default: str) -> str:
    """The ``_target_`` of a node written with an earlier release's ``loader: <name>`` key (deprecated: warns with
    the spelling to use instead); a node with a ``_target_`` returns it unchanged."""
    if spec.get("_target_"):
        return str(spec["_target_"])
    loader = spec.get("loader", default)
    name = spec.get("name") or loader
    if loader not in table:
        raise ConfigError(
            f"{what} {name!r}: no _target_ and unknown loader={loader!r}; expected a _target_ (e.g. "
            f"{table[default]}) or one of the legacy loader names {sorted(table)}."
        )
    msg = f"{what} {name!r}: 'loader: {loader}' is deprecated; write '_target_: {table[loader]}' instead."
    warnings.warn(msg, DeprecationWarning, stacklevel=3)
    log.warning(msg)
    return table[loader]


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of a plain or OmegaConf node (``kwargs`` override its fields).

    An error raised by the target itself (a bad file, row or option) comes out as that error, not wrapped in
    Hydra's ``InstantiationException``, so its message (which names the file, row and field) reaches the user; a
    ``TypeError`` (an option the target does not take) keeps Hydra's message, which names the target.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as _instantiate

    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, Exception) and not isinstance(cause, (InstantiationException, TypeError)):
            raise cause from None
        raise
