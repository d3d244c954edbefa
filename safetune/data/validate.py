"""Validation of preference data: per-row rules, dataset rules, and the training gate.

Every issue names where it is (``file:line`` when the loader knows it, else ``id=...``), the field,
the rule and the fix. Errors make ``safetune-data validate`` exit non-zero and stop training unless
``data.allow_invalid=true``; warnings are summarised.

Errors: ``invalid_row`` (a loader rejected the row), ``empty_field``, ``empty_turn``, ``role_order``,
``identical_pair``, ``encoding``, ``bad_label`` (category/tactic/severity), ``duplicate_id``,
``swapped_duplicate`` (the same pair with chosen/rejected exchanged: contradictory labels), ``leakage``.

Warnings: ``rejected_is_refusal`` (only for harmful rows: on benign rows a refused reply is exactly
what should be rejected), ``lecturing_refusal`` and ``refusal_without_alternative`` (chosen refusals on
harmful rows), ``benign_chosen_refusal``, ``too_short``, ``duplicate``, ``skipped_rows``,
``length_bias``, ``tactic_coverage``, ``category_coverage``.

The refusal, lecturing and alternative detectors are the refusal lexicon's (:mod:`safetune.core.lexicon`): the
declining cues (:data:`~safetune.core.lexicon.DECLINE_RE`) and the rubric's moralising and alternative cues, each
named for what it detects, in one module with the judge's rules.
Thresholds come from ``data.validation`` (see :data:`DEFAULTS`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any

from safetune.core import lexicon
from safetune.core.config import to_plain
from safetune.core.errors import InputError
from safetune.core.schema import HARM_CATEGORIES, ROLES, TACTICS, PreferenceExample
from safetune.data.mix import DataBundle, build_preference_data, normalise_text, pair_key

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "min_chars": 20,  # responses shorter than this are flagged
    "length_bias": 0.85,  # warn when chosen is longer (or shorter) than rejected in more than this fraction
    "length_bias_min_rows": 10,  # ... of at least this many pairs
    "min_per_category": 1,  # harmful rows per taxonomy category before coverage warns
    "tactic_targets": {  # share of tactic-labelled rows, [low, high]
        "direct": [0.25, 0.35],
        "prompt_injection": [0.15, 0.25],
        "social_engineering": [0.15, 0.20],
        "gradual_escalation": [0.10, 0.15],
        "edge_case": [0.20, 0.30],
    },
}

_MOJIBAKE = re.compile("Ã[\u0080-\u00bf]|â€[\u0080-\u00bf\u2018-\u201d\u2122\u0153\u02dc]|Â[\u00a0-\u00bf]|\ufffd")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def broken_text(text: str) -> str | None:
    """The first mis-decoded or control character of ``text`` (what validation calls broken encoding), else None."""
    m = _MOJIBAKE.search(text) or _CONTROL.search(text)
    return m.group(0) if m else None


def is_refusal(text: str) -> bool:
    """Does the opening of a reply decline the request? (:func:`safetune.core.lexicon.declines`)"""
    return lexicon.declines(text)


def lectures(text: str) -> bool:
    """Does a reply moralise at the user ("how dare", "you should be ashamed", ...)? (the rubric's cue)"""
    return lexicon.moralises(text)


def offers_alternative(text: str) -> bool:
    """Does a refusal point somewhere useful (a safe alternative, a resource, a follow-up question)?"""
    return lexicon.offers_alternative(text) or text.rstrip().endswith("?")


@dataclass
class Issue:
    level: str = dc_field(metadata={"help": "'error' or 'warning'."})
    rule: str = dc_field(metadata={"help": "Rule name, e.g. 'identical_pair'."})
    where: str = dc_field(metadata={"help": "file:line, file:row N, or id=... when no location is known."})
    field: str = dc_field(metadata={"help": "The field the rule looked at ('' for dataset rules)."})
    message: str = dc_field(metadata={"help": "What is wrong and how to fix it."})

    def __str__(self) -> str:
        fld = f" field '{self.field}'" if self.field else ""
        return f"{self.level}: {self.where}:{fld} [{self.rule}] {self.message}"


@dataclass
class ValidationReport:
    rows: int = dc_field(default=0, metadata={"help": "Rows checked."})
    issues: list[Issue] = dc_field(default_factory=list, metadata={"help": "All errors and warnings."})

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for i in self.issues:
            out[i.level][i.rule] += 1
        return {k: dict(v) for k, v in out.items()}

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "errors": len(self.errors), "warnings": len(self.warnings), "by_rule": self.counts()}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "issues": [asdict(i) for i in self.issues]}


class InvalidDataError(InputError):
    """Validation found errors and ``data.allow_invalid`` is false."""


def _where(ex: PreferenceExample) -> str:
    return str(ex.metadata.get("location") or f"id={ex.id}")


def check_example(ex: PreferenceExample, opts: dict[str, Any]) -> list[Issue]:
    """Per-row rules."""
    w = _where(ex)
    out: list[Issue] = []

    def add(level: str, rule: str, fld: str, msg: str) -> None:
        out.append(Issue(level, rule, w, fld, msg))

    # prompt: roles, order, empty turns
    if not ex.prompt:
        add("error", "empty_field", "prompt", "prompt has no messages; expected at least one user turn.")
    for i, m in enumerate(ex.prompt):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            add("error", "role_order", f"prompt[{i}].role", f"role {role!r} is not one of {ROLES}.")
        if not isinstance(content, str) or not content.strip():
            add("error", "empty_turn", f"prompt[{i}].content", f"{role} turn is empty; remove the turn or fill it in.")
    roles = [m.get("role") for m in ex.prompt]
    body = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
    if ex.prompt and (body != expected or not body or body[-1] != "user"):
        add(
            "error",
            "role_order",
            "prompt",
            f"roles are {roles}; expected an optional leading system message, then user/assistant turns "
            "alternating from user and ending with user.",
        )
    # responses
    for name in ("chosen", "rejected"):
        text = getattr(ex, name)
        if not isinstance(text, str) or not text.strip():
            add("error", "empty_field", name, f"{name} is empty; expected a non-empty assistant reply.")
        elif len(text.strip()) < int(opts["min_chars"]):
            add("warning", "too_short", name, f"{name} has {len(text.strip())} characters (< {opts['min_chars']}).")
    texts = {
        "prompt": " ".join(str(m.get("content", "")) for m in ex.prompt),
        "chosen": ex.chosen,
        "rejected": ex.rejected,
    }
    for name, text in texts.items():
        bad = broken_text(text) if isinstance(text, str) else None
        if bad:
            add(
                "error",
                "encoding",
                name,
                f"broken encoding ({bad!r}): mis-decoded UTF-8 or control characters; re-export as UTF-8.",
            )
    if not isinstance(ex.chosen, str) or not isinstance(ex.rejected, str) or not ex.chosen.strip():
        return out
    if ex.chosen == ex.rejected:
        add("error", "identical_pair", "chosen", "chosen and rejected are identical; the pair teaches nothing.")
    elif normalise_text(ex.chosen) == normalise_text(ex.rejected):
        add("error", "identical_pair", "chosen", "chosen and rejected differ only in whitespace/case/punctuation.")
    # labels
    for c in ex.categories:
        if c not in HARM_CATEGORIES:
            add(
                "error",
                "bad_label",
                "categories",
                f"{c!r} is not a taxonomy category (safetune.core.schema.HARM_CATEGORIES).",
            )
    if ex.tactic not in TACTICS:
        add("error", "bad_label", "tactic", f"{ex.tactic!r} is not one of {TACTICS}.")
    if ex.severity is not None and ex.severity not in (0, 1, 2, 3):
        add("error", "bad_label", "severity", f"severity {ex.severity!r} is outside 0-3.")
    # refusal heuristics
    chosen_refuses = is_refusal(ex.chosen)
    if ex.is_harmful:
        if is_refusal(ex.rejected):
            add(
                "warning",
                "rejected_is_refusal",
                "rejected",
                "the rejected reply to a harmful prompt is itself a refusal; DPO will push away from refusing.",
            )
        if chosen_refuses and lectures(ex.chosen):
            add(
                "warning",
                "lecturing_refusal",
                "chosen",
                "the chosen refusal lectures the user; prefer a brief, respectful decline.",
            )
        if chosen_refuses and not offers_alternative(ex.chosen):
            add(
                "warning",
                "refusal_without_alternative",
                "chosen",
                "the chosen refusal offers no safe alternative or next step.",
            )
    elif chosen_refuses and not ex.categories and ex.tactic != "none":
        add(
            "warning",
            "benign_chosen_refusal",
            "chosen",
            "the chosen reply to a benign prompt is a refusal (over-refusal).",
        )
    return out


def check_dataset(examples: list[PreferenceExample], opts: dict[str, Any]) -> list[Issue]:
    """Dataset rules: duplicates, swapped duplicates, length bias, tactic and category coverage."""
    out: list[Issue] = []
    ids: dict[str, str] = {}
    pairs: dict[str, str] = {}
    for ex in examples:
        w = _where(ex)
        if ex.id in ids:
            out.append(
                Issue(
                    "error", "duplicate_id", w, "id", f"id {ex.id!r} already used at {ids[ex.id]}; ids must be unique."
                )
            )
        ids.setdefault(ex.id, w)
        k = pair_key(ex)
        swapped = pair_key(ex, swapped=True)
        if k in pairs:
            out.append(Issue("warning", "duplicate", w, "", f"duplicate of {pairs[k]} (dedup drops it)."))
        elif swapped in pairs and swapped != k:
            out.append(
                Issue(
                    "error",
                    "swapped_duplicate",
                    w,
                    "chosen",
                    f"the same pair appears at {pairs[swapped]} with chosen and rejected exchanged.",
                )
            )
        pairs.setdefault(k, w)
    n = len(examples)
    if not n:
        return out
    longer = sum(len(ex.chosen) > len(ex.rejected) for ex in examples) / n
    thr = float(opts["length_bias"])
    if n >= int(opts["length_bias_min_rows"]) and (longer > thr or longer < 1 - thr):
        mean_c = sum(len(ex.chosen) for ex in examples) / n
        mean_r = sum(len(ex.rejected) for ex in examples) / n
        out.append(
            Issue(
                "warning",
                "length_bias",
                "dataset",
                "",
                f"chosen is longer than rejected in {longer:.0%} of pairs (mean {mean_c:.0f} vs {mean_r:.0f} chars); "
                "DPO may learn length instead of safety. Balance lengths or add counter-examples.",
            )
        )
    labelled = [ex.tactic for ex in examples if ex.tactic != "none"]
    targets = opts.get("tactic_targets") or {}
    if not labelled and targets:
        out.append(
            Issue("warning", "tactic_coverage", "dataset", "tactic", "no row has a tactic label; coverage not checked.")
        )
    elif labelled:
        counts = Counter(labelled)
        for tactic, (lo, hi) in targets.items():
            share = counts.get(tactic, 0) / len(labelled)
            if not float(lo) <= share <= float(hi):
                out.append(
                    Issue(
                        "warning",
                        "tactic_coverage",
                        "dataset",
                        "tactic",
                        f"{tactic} is {share:.0%} of tactic-labelled rows ({counts.get(tactic, 0)}/{len(labelled)}); "
                        f"target {float(lo):.0%}-{float(hi):.0%}.",
                    )
                )
    harmful = [ex for ex in examples if ex.is_harmful]
    if harmful:
        cats = Counter(c for ex in harmful for c in ex.categories)
        low = [c for c in HARM_CATEGORIES if cats.get(c, 0) < int(opts["min_per_category"])]
        if low:
            out.append(
                Issue(
                    "warning",
                    "category_coverage",
                    "dataset",
                    "categories",
                    f"{len(low)} taxonomy categor{'y has' if len(low) == 1 else 'ies have'} fewer than "
                    f"{opts['min_per_category']} harmful row(s): {', '.join(low)}.",
                )
            )
    return out


def options(data_cfg: Any = None) -> dict[str, Any]:
    cfg = dict(to_plain(data_cfg) or {})
    opts = {**DEFAULTS, **(cfg.get("validation") or {})}
    return opts


def validate_examples(examples: list[PreferenceExample], data_cfg: Any = None) -> ValidationReport:
    opts = options(data_cfg)
    report = ValidationReport(rows=len(examples))
    for ex in examples:
        report.issues.extend(check_example(ex, opts))
    report.issues.extend(check_dataset(examples, opts))
    return report


# load-time problems -> their rule names (one pass reports them all, counted per rule)
_LOAD_RULES = (
    ("malformed JSON", "malformed_json"),
    ("broken encoding", "encoding"),
    ("expected a JSON object per line", "malformed_json"),
    ("yields no usable rows", "empty_source"),
)


def validate_bundle(bundle: DataBundle, data_cfg: Any = None) -> ValidationReport:
    """Row and dataset rules on train+eval rows, plus the bundle's load errors, skipped rows and leakage."""
    report = validate_examples(bundle.train + bundle.eval, data_cfg)
    report.rows += sum(1 for _, m in bundle.errors if "yields no usable rows" not in m)
    for where, msg in reversed(bundle.errors):
        msg = msg[len(where) + 2 :] if msg.startswith(f"{where}: ") else msg
        msg = re.sub(r"^\S+:\d+: ", "", msg) if re.match(r"^\S+:\d+: ", msg) else msg  # the location is in `where`
        rule = next((r for cue, r in _LOAD_RULES if cue in msg), "invalid_row")
        report.issues.insert(0, Issue("error", rule, where, "", msg))
    if not bundle.train and not bundle.eval and not bundle.errors:
        report.issues.insert(0, Issue("error", "empty_data", "dataset", "", "the configured data holds no rows."))
    for hit in bundle.leakage:
        report.issues.append(
            Issue(
                "error",
                "leakage",
                hit["location"],
                "prompt",
                f"prompt repeats evaluation-suite prompt {hit['suite_location']} ({hit['suite']}): {hit['prompt']!r}; "
                "remove it from the training data.",
            )
        )
    for src in bundle.manifest.get("sources", []):
        for reason, count in (src.get("skipped") or {}).items():
            first = (src.get("skipped_examples") or {}).get(reason, ["?"])[0]
            report.issues.append(
                Issue("warning", "skipped_rows", first, "", f"{src['name']}: {count} row(s) left out: {reason}.")
            )
    return report


def validate_config(data_cfg: Any) -> tuple[DataBundle, ValidationReport]:
    """Load the configured sources without stopping at bad rows, then validate everything."""
    cfg = dict(to_plain(data_cfg))
    cfg["dedup"] = False  # report duplicates instead of silently dropping them
    bundle = build_preference_data(cfg, on_error="collect")
    return bundle, validate_bundle(bundle, data_cfg)


def enforce_valid(bundle: DataBundle, data_cfg: Any) -> ValidationReport:
    """The training gate: raise :class:`InvalidDataError` on errors unless ``data.allow_invalid`` is true."""
    report = validate_bundle(bundle, data_cfg)
    bundle.manifest["validation"] = report.summary()
    if report.warnings:
        log.warning("Data validation: %d warning(s): %s", len(report.warnings), report.counts().get("warning"))
    if report.errors:
        shown = "\n  ".join(str(i) for i in report.errors[:10])
        more = f"\n  ... and {len(report.errors) - 10} more" if len(report.errors) > 10 else ""
        msg = (
            f"Data validation found {len(report.errors)} error(s):\n  {shown}{more}\n"
            "Fix the data (run `safetune-data validate` for the full list) or set data.allow_invalid=true."
        )
        if not bool(to_plain(data_cfg).get("allow_invalid", False)):
            raise InvalidDataError(msg)
        log.warning("%s (continuing: data.allow_invalid=true)", msg)
    return report
