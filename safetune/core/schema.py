"""The shared schema: preference examples, evaluation prompts, generations, verdicts.

Every loader maps its raw rows onto :class:`PreferenceExample`; every evaluation
suite maps its rows onto :class:`EvalPrompt`; the evaluation pipeline turns each
judged answer into an :class:`EvalRecord`, which metrics, reports, comparisons
and preference synthesis read.

The harm taxonomy is the 19 PKU-SafeRLHF categories, numbered S1..S19 in the
order the dataset stores them. Other sources map onto it through
:data:`CATEGORY_ALIASES` (case/whitespace-insensitive).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from safetune.core.errors import InputError

HARM_CATEGORIES: tuple[str, ...] = (
    "Endangering National Security",  # S1
    "Insulting Behavior",  # S2
    "Discriminatory Behavior",  # S3
    "Endangering Public Health",  # S4
    "Copyright Issues",  # S5
    "Violence",  # S6
    "Drugs",  # S7
    "Privacy Violation",  # S8
    "Economic Crime",  # S9
    "Mental Manipulation",  # S10
    "Human Trafficking",  # S11
    "Physical Harm",  # S12
    "Sexual Content",  # S13
    "Cybercrime",  # S14
    "Disrupting Public Order",  # S15
    "Environmental Damage",  # S16
    "Psychological Harm",  # S17
    "White-Collar Crime",  # S18
    "Animal Abuse",  # S19
)

CATEGORY_CODES: dict[str, str] = {name: f"S{i + 1}" for i, name in enumerate(HARM_CATEGORIES)}

TACTICS: tuple[str, ...] = (
    "direct",
    "prompt_injection",
    "social_engineering",
    "gradual_escalation",
    "edge_case",
    "none",
)

SEVERITY_LEVELS: tuple[int, ...] = (0, 1, 2, 3)

ROLES: tuple[str, ...] = ("system", "user", "assistant")


def _norm_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# Names used by other sources (HarmBench semantic categories, JailbreakBench
# categories, XSTest types, common synonyms) -> canonical taxonomy name.
CATEGORY_ALIASES: dict[str, str] = {
    **{_norm_key(c): c for c in HARM_CATEGORIES},
    **{_norm_key(code): c for c, code in CATEGORY_CODES.items()},
    # HarmBench SemanticCategory
    "chemical biological": "Endangering Public Health",
    "illegal": "Economic Crime",
    "misinformation disinformation": "Disrupting Public Order",
    "harmful": "Physical Harm",
    "harassment bullying": "Insulting Behavior",
    "cybercrime intrusion": "Cybercrime",
    "copyright": "Copyright Issues",
    # JailbreakBench category
    "harassment discrimination": "Discriminatory Behavior",
    "malware hacking": "Cybercrime",
    "physical harm": "Physical Harm",
    "economic harm": "Economic Crime",
    "fraud deception": "White-Collar Crime",
    "disinformation": "Disrupting Public Order",
    "sexual adult content": "Sexual Content",
    "privacy": "Privacy Violation",
    "expert advice": "Endangering Public Health",
    "government decision making": "Endangering National Security",
    # common synonyms
    "hate speech": "Discriminatory Behavior",
    "hate": "Discriminatory Behavior",
    "harassment": "Insulting Behavior",
    "self harm": "Psychological Harm",
    "weapons": "Violence",
    "terrorism": "Endangering National Security",
    "fraud": "White-Collar Crime",
    "malware": "Cybercrime",
    "hacking": "Cybercrime",
    "drug": "Drugs",
    "illegal drugs": "Drugs",
    "animal cruelty": "Animal Abuse",
    "trafficking": "Human Trafficking",
    "sexual": "Sexual Content",
    "misinformation": "Disrupting Public Order",
}


class SchemaError(InputError):
    """A row does not fit the schema. The message names the source, row and field."""


def canonical_category(name: str, *, where: str = "") -> str:
    """Map a category name (canonical, S-code, or a known alias) to the taxonomy.

    Raises :class:`SchemaError` naming ``where`` and listing valid names when unknown.
    """
    key = _norm_key(str(name))
    if key in CATEGORY_ALIASES:
        return CATEGORY_ALIASES[key]
    prefix = f"{where}: " if where else ""
    raise SchemaError(
        f"{prefix}unknown harm category {name!r}. Expected one of the 19 taxonomy names "
        f"({', '.join(HARM_CATEGORIES[:3])}, ...) or their codes S1..S19, or a known alias; "
        "add a mapping with `data.category_map` if this is a source-specific name."
    )


def check_tactic(tactic: str | None, *, where: str = "") -> str:
    t = (tactic or "none").strip().lower().replace("-", "_").replace(" ", "_")
    if t not in TACTICS:
        prefix = f"{where}: " if where else ""
        raise SchemaError(f"{prefix}unknown tactic {tactic!r}; expected one of {', '.join(TACTICS)}.")
    return t


Message = dict[str, str]


def last_user_text(messages: list[Message]) -> str:
    """Text of the last user turn (what dedup, leakage and reports key on)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class _Row:
    """``to_dict``/``from_dict`` for the schema's dataclasses (unknown keys are ignored when reading)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})  # type: ignore[attr-defined]


@dataclass
class PreferenceExample(_Row):
    """One preference pair in the normalised schema.

    ``prompt`` is a list of chat messages (optional leading system message, then
    alternating user/assistant turns ending with a user turn). ``chosen`` and
    ``rejected`` are the competing final assistant replies (plain strings).
    """

    id: str = field(metadata={"help": "Stable id, unique within a dataset."})
    prompt: list[Message] = field(metadata={"help": "Chat messages up to the reply being judged."})
    chosen: str = field(metadata={"help": "The preferred assistant reply."})
    rejected: str = field(metadata={"help": "The dispreferred assistant reply."})
    categories: list[str] = field(
        default_factory=list, metadata={"help": "Harm categories from HARM_CATEGORIES; empty when benign."}
    )
    severity: int | None = field(default=None, metadata={"help": "0 (none) .. 3 (severe); None when unknown."})
    tactic: str = field(default="none", metadata={"help": "How the request is phrased; one of TACTICS."})
    source: str = field(default="", metadata={"help": "Where the row came from, e.g. 'pku_saferlhf:alpaca-7b'."})
    metadata: dict[str, Any] = field(default_factory=dict, metadata={"help": "Free per-row metadata."})

    @property
    def is_harmful(self) -> bool:
        return bool(self.categories)

    @property
    def user_text(self) -> str:
        """Text of the last user turn (what dedup, leakage and reports key on)."""
        return last_user_text(self.prompt)


@dataclass
class EvalPrompt(_Row):
    """One evaluation prompt. ``kind`` is 'harmful' (should be refused) or 'benign' (should be answered)."""

    id: str = field(metadata={"help": "Stable id within the suite."})
    prompt: list[Message] = field(metadata={"help": "Chat messages ending with the user turn to answer."})
    kind: str = field(metadata={"help": "'harmful' or 'benign'."})
    suite: str = field(default="", metadata={"help": "Suite name, e.g. 'bundled_harmful' or 'xstest'."})
    category: str | None = field(default=None, metadata={"help": "Taxonomy category (harmful prompts)."})
    type: str | None = field(default=None, metadata={"help": "Benign type (homonyms, safe_contexts, ...)."})
    tactic: str = field(default="none", metadata={"help": "One of TACTICS."})
    severity: int | None = field(default=None, metadata={"help": "0..3 when the suite provides it."})
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        return last_user_text(self.prompt)

    @property
    def group(self) -> str:
        """The reporting group: harmful -> category (else the suite's own type, e.g. XSTest's
        ``contrast_homonyms``), benign -> type; 'uncategorised' when neither is known."""
        return report_group(self.kind, self.category, self.type)


@dataclass
class Generation(_Row):
    """A model's answer to one evaluation prompt."""

    prompt_id: str
    suite: str
    checkpoint: str
    response: str
    settings_key: str = ""
    sample: int = 0


def report_group(kind: str | None, category: str | None, type_: str | None) -> str:
    """The one rule for reporting groups (used by every report, the training callback and comparisons):
    harmful -> category, else type; benign -> type; unknown kind -> category, else type."""
    if kind == "benign":
        return type_ or "uncategorised"
    return category or type_ or "uncategorised"


VERDICT_LABELS: tuple[str, ...] = ("refusal", "compliance", "partial")


@dataclass
class Verdict:
    """A judge's decision on one response: 'refusal', 'compliance' or 'partial' (refuses, then leaks)."""

    label: str
    score: float = 1.0
    judge: str = ""
    reason: str = ""

    @property
    def refused(self) -> bool:
        return self.label == "refusal"


@dataclass
class EvalRecord:
    """One judged answer: the prompt's reporting fields, the answer and the verdict (a row of verdicts.jsonl)."""

    prompt_id: str = field(metadata={"help": "EvalPrompt.id."})
    suite: str = field(metadata={"help": "Suite name."})
    kind: str | None = field(metadata={"help": "'harmful' or 'benign' (None: unknown, kept by every filter)."})
    group: str = field(metadata={"help": "Reporting group (see report_group)."})
    label: str = field(metadata={"help": "The verdict: 'refusal', 'compliance' or 'partial'."})
    category: str | None = field(default=None, metadata={"help": "Taxonomy category (harmful prompts)."})
    type: str | None = field(default=None, metadata={"help": "Benign type or the suite's own type."})
    tactic: str = field(default="none", metadata={"help": "One of TACTICS."})
    severity: int | None = field(default=None, metadata={"help": "0..3 when the suite provides it."})
    sample: int = field(default=0, metadata={"help": "Sample index (sampling with num_samples > 1)."})
    prompt: str = field(default="", metadata={"help": "Text of the last user turn."})
    response: str = field(default="", metadata={"help": "The model's answer."})
    judge: str = field(default="", metadata={"help": "Name of the judge that decided."})
    reason: str = field(default="", metadata={"help": "The judge's reason."})
    confidence: float | None = field(
        default=None, metadata={"help": "The judge's (calibrated) confidence in the label; 1.0 for a human label."}
    )
    rubric: dict[str, Any] | None = field(
        default=None, metadata={"help": "Refusal-quality rubric scores (harmful refusals only)."}
    )

    @property
    def key(self) -> tuple[str, str, int]:
        """What pairs two evaluations' records: (suite, prompt id, sample)."""
        return (self.suite, self.prompt_id, self.sample)

    @property
    def refused(self) -> bool:
        return self.label == "refusal"

    @classmethod
    def from_prompt(cls, p: EvalPrompt, response: str, verdict: Verdict, *, sample: int = 0) -> EvalRecord:
        shared = {k: getattr(p, k) for k in ("suite", "kind", "group", "category", "type", "tactic", "severity")}
        verdict_fields = {
            "label": verdict.label,
            "judge": verdict.judge,
            "reason": verdict.reason,
            "confidence": verdict.score,
        }
        return cls(prompt_id=p.id, sample=sample, prompt=p.user_text, response=response, **shared, **verdict_fields)

    def to_dict(self) -> dict[str, Any]:
        keys = ("prompt_id", "suite", "kind", "group", "category", "type", "tactic", "severity", "sample")
        d = {k: getattr(self, k) for k in keys}
        d.update(prompt=self.prompt, response=self.response, label=self.label, judge=self.judge, reason=self.reason)
        if self.confidence is not None:
            d["confidence"] = self.confidence
        if self.rubric is not None:
            d["rubric"] = self.rubric
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRecord:
        """A record from a verdicts.jsonl row (or a plain dict with at least ``label`` and ``kind``)."""
        kind = d.get("kind")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        known.setdefault("prompt_id", str(d.get("prompt_id", d.get("id", ""))))
        known.setdefault("suite", str(d.get("suite", "")))
        known["kind"] = kind
        known.setdefault("group", report_group(kind, d.get("category"), d.get("type")))
        if isinstance(known.get("prompt"), list):  # a message list: keep the last user turn
            known["prompt"] = last_user_text(known["prompt"])
        return cls(**known)

    @classmethod
    def coerce(cls, r: EvalRecord | dict[str, Any]) -> EvalRecord:
        return r if isinstance(r, EvalRecord) else cls.from_dict(r)


def as_messages(prompt: str | list[Message] | list[dict[str, Any]], *, where: str = "") -> list[Message]:
    """Normalise a prompt given as a string or a message list; validate roles and order."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SchemaError(f"{where}: prompt is an empty string; expected text or a list of messages.")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise SchemaError(
            f"{where}: prompt must be a string or a non-empty list of {{role, content}} messages, "
            f"got {type(prompt).__name__}."
        )
    out: list[Message] = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise SchemaError(f"{where}: prompt[{i}] must be a dict with 'role' and 'content', got {m!r:.80}.")
        role, content = str(m["role"]).strip().lower(), m["content"]
        role = {"human": "user", "gpt": "assistant", "bot": "assistant"}.get(role, role)
        if role not in ROLES:
            raise SchemaError(f"{where}: prompt[{i}].role is {m['role']!r}; expected one of {ROLES}.")
        if not isinstance(content, str):
            raise SchemaError(f"{where}: prompt[{i}].content must be a string, got {type(content).__name__}.")
        out.append({"role": role, "content": content})
    return out


def content_hash(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object (used in manifests and cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
