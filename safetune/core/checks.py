"""Type and range checks of config values against a dataclass's annotations, before any model loads.

``check_fields(values, cls, prefix=..., ranges=...)`` raises :class:`~safetune.core.config.ConfigError` naming the
config key (``trainer.beta``), the expected type or range and the value got, for the first value that does not fit.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

from safetune.core.config import ConfigError

# (low, high, low inclusive, high inclusive); None = unbounded
Range = tuple[float | None, float | None, bool, bool]
POSITIVE: Range = (0, None, False, True)
AT_LEAST_ONE: Range = (1, None, True, True)
NON_NEGATIVE: Range = (0, None, True, True)
UNIT: Range = (0, 1, True, True)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"one of {[m.value for m in tp]}"
    if tp is Any:
        return "any value"
    return {float: "a number", int: "an integer", bool: "true/false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def fits(value: Any, tp: Any) -> bool:
    """Does ``value`` (a plain config value) fit the annotation ``tp``?"""
    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(fits(v, args[0]) for v in value))
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not understand: leave it to the library


def in_range(value: Any, rng: Range) -> bool:
    lo, hi, lo_inc, hi_inc = rng
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    if lo is not None and (value < lo or (value == lo and not lo_inc)):
        return False
    return not (hi is not None and (value > hi or (value == hi and not hi_inc)))


def _range_text(rng: Range) -> str:
    lo, hi, lo_inc, hi_inc = rng
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inc else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<=' if hi_inc else '<'} {hi:g}")
    return " and ".join(parts)


def check_fields(
    values: Mapping[str, Any],
    cls: type,
    *,
    prefix: str,
    ranges: Mapping[str, Range] | None = None,
    hints: Mapping[str, Any] | None = None,
) -> None:
    """Check every non-null value whose key is a field of ``cls`` against its annotation and ``ranges``."""
    annotations = dict(hints or typing.get_type_hints(cls))
    for key, value in values.items():
        if value is None or key not in annotations:
            continue
        tp = annotations[key]
        if not fits(value, tp):
            raise ConfigError(
                f"{prefix}.{key}={value!r} ({type(value).__name__}): expected {_describe(tp)}.",
                hint=f"set {prefix}.{key} to {_describe(tp)} on the command line or in the config",
            )
        rng = (ranges or {}).get(key)
        if rng is not None:
            _check_range(value, rng, f"{prefix}.{key}")


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range], *, prefix: str) -> None:
    """The cheap part of :func:`check_fields`: every ranged key must hold a number inside its range.

    Needs no dataclass (so no heavy import): entry points run it right after composing the config, so a typo such
    as ``trainer.learning_rate=-1`` fails in about a second instead of after torch, transformers and TRL load.
    """
    for key, rng in ranges.items():
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(
                f"{prefix}.{key}={value!r} ({type(value).__name__}): expected a number.",
                hint=f"set {prefix}.{key} to a number on the command line or in the config",
            )
        _check_range(value, rng, f"{prefix}.{key}")


def _check_range(value: Any, rng: Range, name: str) -> None:
    if not in_range(value, rng):
        raise ConfigError(
            f"{name}={value!r} is out of range: expected {_range_text(rng)}.", hint=f"choose {name} {_range_text(rng)}"
        )
