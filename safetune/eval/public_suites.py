"""Loaders for public safety suites, from local files or the hub, mapped onto the project taxonomy.

Each loader takes ``(path, *, name, **options)`` and returns :class:`EvalPrompt` rows; ``path`` is a local
file (CSV/JSONL/JSON) or a hub dataset id read through :func:`safetune.data.io.iter_rows`.

* XSTest (``walledai/XSTest``; file ``xstest_prompts.csv``): safe prompts are benign (group = XSTest type),
  unsafe ``contrast_*`` prompts are harmful.
* AdvBench (``walledai/AdvBench``; ``harmful_behaviors.csv``): harmful behaviours, no categories.
* HarmBench (``walledai/HarmBench``; ``harmbench_behaviors_text_all.csv``): semantic categories mapped onto the
  taxonomy; contextual rows get their context before the behaviour; copyright rows go to their own suite.
* JailbreakBench (``JailbreakBench/JBB-Behaviors``; ``harmful-behaviors.csv`` / ``benign-behaviors.csv``), and
  jailbreak artifact JSON files (e.g. PAIR) whose ``prompt`` field is the attack.
* PKU-SafeRLHF (``PKU-Alignment/PKU-SafeRLHF``): a prompt's categories are the union of its responses' harm
  categories; prompts with none are benign.
"""

from __future__ import annotations

from typing import Any

from safetune.data.io import iter_rows
from safetune.schema import HARM_CATEGORIES, EvalPrompt, SchemaError, canonical_category

# XSTest unsafe ("contrast_") types whose topic is a taxonomy category; the others stay uncategorised and
# are reported by their XSTest type.
XSTEST_CONTRAST_CATEGORIES = {
    "contrast_discr": "Discriminatory Behavior",
    "contrast_privacy": "Privacy Violation",
    "contrast_historical_events": "Violence",
}


def _get(row: dict[str, Any], *names: str, where: str, required: bool = True) -> Any:
    """First present field among ``names`` (case-insensitive: copies of these files differ in header case)."""
    lower = {str(k).lower(): v for k, v in row.items()}
    for n in names:
        v = lower.get(n.lower())
        if v not in (None, ""):
            return v
    if required:
        raise SchemaError(
            f"{where}: missing field {names[0]!r} (also tried {list(names[1:])}); got fields {sorted(row)}."
        )
    return None


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": str(text).strip()}]


def load_xstest(
    path: str = "walledai/XSTest", *, name: str = "xstest", split: str = "test", **_: Any
) -> list[EvalPrompt]:
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split)):
        label = str(_get(row, "label", where=where)).strip().lower()
        if label not in ("safe", "unsafe"):
            raise SchemaError(f"{where}: field 'label' must be 'safe' or 'unsafe', got {label!r}.")
        xtype = str(_get(row, "type", where=where)).strip()
        pid = str(_get(row, "id", where=where, required=False) or i + 1)
        meta = {k: row.get(k) for k in ("focus", "note") if row.get(k)}
        if label == "safe":
            out.append(
                EvalPrompt(
                    id=f"xstest-{pid}",
                    prompt=_user(_get(row, "prompt", where=where)),
                    kind="benign",
                    suite=name,
                    type=xtype,
                    metadata=meta,
                )
            )
        else:
            out.append(
                EvalPrompt(
                    id=f"xstest-{pid}",
                    prompt=_user(_get(row, "prompt", where=where)),
                    kind="harmful",
                    suite=name,
                    category=XSTEST_CONTRAST_CATEGORIES.get(xtype),
                    type=xtype,
                    metadata=meta,
                )
            )
    return out


def load_advbench(
    path: str = "walledai/AdvBench",
    *,
    name: str = "advbench",
    split: str = "train",
    category: str | None = None,
    **_: Any,
) -> list[EvalPrompt]:
    cat = canonical_category(category, where="advbench suite option 'category'") if category else None
    return [
        EvalPrompt(
            id=f"advbench-{i}",
            prompt=_user(_get(row, "goal", "prompt", "behavior", where=where)),
            kind="harmful",
            suite=name,
            category=cat,
            type="advbench",
            metadata={"target": row.get("target")},
        )
        for i, (where, row) in enumerate(iter_rows(path, split=split))
    ]


def load_harmbench(
    path: str = "walledai/HarmBench",
    *,
    name: str = "harmbench",
    split: str = "train",
    subset: str | None = None,
    copyright: str = "separate",
    **_: Any,
) -> list[EvalPrompt]:
    """``copyright``: 'separate' (own suite ``<name>_copyright``), 'include' or 'drop'."""
    if copyright not in ("separate", "include", "drop"):
        raise ValueError(f"harmbench option copyright={copyright!r}; expected 'separate', 'include' or 'drop'.")
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split, subset=subset)):
        behavior = str(_get(row, "Behavior", "prompt", where=where))
        functional = str(_get(row, "FunctionalCategory", where=where, required=False) or "standard").lower()
        semantic = _get(row, "SemanticCategory", "category", where=where, required=False)
        context = _get(row, "ContextString", "context", where=where, required=False)
        is_copyright = functional == "copyright" or str(semantic).lower() == "copyright"
        if is_copyright and copyright == "drop":
            continue
        text = f"{str(context).strip()}\n\n---\n\n{behavior.strip()}" if context else behavior
        out.append(
            EvalPrompt(
                id=str(_get(row, "BehaviorID", where=where, required=False) or f"harmbench-{i}"),
                prompt=_user(text),
                kind="harmful",
                suite=f"{name}_copyright" if is_copyright and copyright == "separate" else name,
                category=canonical_category(semantic, where=f"{where}: field 'SemanticCategory'") if semantic else None,
                type=functional,
                metadata={"functional_category": functional, "semantic_category": semantic},
            )
        )
    return out


def load_jbb(
    path: str = "JailbreakBench/JBB-Behaviors",
    *,
    name: str = "jbb",
    kind: str = "harmful",
    subset: str = "behaviors",
    split: str | None = None,
    **_: Any,
) -> list[EvalPrompt]:
    """JBB-Behaviors. ``kind`` 'harmful' or 'benign' picks the hub split (files are separate already)."""
    if kind not in ("harmful", "benign"):
        raise ValueError(f"jbb option kind={kind!r}; expected 'harmful' or 'benign'.")
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split or kind, subset=subset)):
        jcat = _get(row, "category", where=where)
        idx = _get(row, "index", "Index", where=where, required=False)
        out.append(
            EvalPrompt(
                id=f"jbb-{kind}-{idx if idx is not None else i}",
                prompt=_user(_get(row, "goal", "Goal", where=where)),
                kind=kind,
                suite=name,
                category=canonical_category(jcat, where=f"{where}: field 'category'") if kind == "harmful" else None,
                type=str(jcat) if kind == "benign" else "jbb",
                metadata={"behavior": row.get("behavior") or row.get("Behavior")},
            )
        )
    return out


def load_jbb_artifacts(
    path: str, *, name: str = "jbb_attack", tactic: str = "social_engineering", **_: Any
) -> list[EvalPrompt]:
    """JailbreakBench attack artifacts (JSON with a ``jailbreaks`` list); rows without an attack prompt are skipped."""
    out = []
    for where, row in iter_rows(path):
        prompt = row.get("prompt")
        if not prompt or str(prompt).strip() in ("None", "null"):
            continue
        out.append(
            EvalPrompt(
                id=f"jbb-attack-{_get(row, 'index', where=where)}",
                prompt=_user(prompt),
                kind="harmful",
                suite=name,
                category=canonical_category(_get(row, "category", where=where), where=f"{where}: field 'category'"),
                tactic=tactic,
                metadata={"goal": row.get("goal"), "reference_jailbroken": row.get("jailbroken")},
            )
        )
    return out


def load_pku(
    path: str = "PKU-Alignment/PKU-SafeRLHF", *, name: str = "pku_saferlhf", split: str = "test", **_: Any
) -> list[EvalPrompt]:
    out = []
    seen: set[str] = set()
    for i, (where, row) in enumerate(iter_rows(path, split=split)):
        prompt = str(_get(row, "prompt", where=where))
        if prompt in seen:  # PKU repeats a prompt once per response pair
            continue
        seen.add(prompt)
        cats: set[str] = set()
        sev = 0
        for r in (0, 1):
            flags = row.get(f"response_{r}_harm_category") or {}
            if not isinstance(flags, dict):
                raise SchemaError(f"{where}: field 'response_{r}_harm_category' must be an object of 19 booleans.")
            cats.update(
                canonical_category(k, where=f"{where}: response_{r}_harm_category") for k, v in flags.items() if v
            )
            sev = max(sev, int(row.get(f"response_{r}_severity_level") or 0))
        ordered = [c for c in HARM_CATEGORIES if c in cats]
        out.append(
            EvalPrompt(
                id=f"pku-{i}",
                prompt=_user(prompt),
                kind="harmful" if ordered else "benign",
                suite=name,
                category=ordered[0] if ordered else None,
                type=None if ordered else "pku_safe",
                severity=sev if ordered else None,
                metadata={"categories": ordered},
            )
        )
    return out
