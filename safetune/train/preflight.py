"""Preflight: catch chat-template bugs on a sample of rows before a DPO run starts.

Every rule tokenises rows exactly as ``trl.DPOTrainer`` does (:meth:`ChatFormatter.tokenize_like_trl`):

- ``renders``: the template renders every sampled conversation without raising.
- ``prompt-prefix``: the tokenised prompt is an exact prefix of prompt+chosen and of prompt+rejected.
- ``generation-parity``: the prompt generation feeds the model (:meth:`ChatFormatter.render_prompt`, tokenised
  without extra special tokens) is the same token sequence training conditions on.
- ``end-of-turn``: exactly one end-of-turn/EOS token closes each response, with nothing but whitespace after it.
  The end-of-turn token is found from the template's own rendering (what follows an assistant message).
- ``system-once``: the system prompt (the row's, the formatter's, or the template's built-in default) appears
  at most once, and an explicit one is not dropped or joined by the template's default.
- ``bos-once``: BOS is not doubled at the start and, unless the template uses it to open every turn, appears once.
- ``truncation``: rows whose response ``max_length`` would cut (TRL keeps the start of prompt+completion), and
  rows TRL would drop because the prompt alone fills ``max_length``.

Training runs it automatically (``template.preflight``); ``safetune-data preflight`` (:mod:`safetune.cli.data`) runs it
by hand and prints the report with token boundaries.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safetune.core.errors import InputError, SafetuneError
from safetune.core.formatting import (
    ChatFormatter,
    TemplateProbe,
    TokenizedPair,
    probe_template,
    render,
)
from safetune.core.schema import Message, PreferenceExample

log = logging.getLogger(__name__)

PASS, WARN, FAIL = "pass", "warn", "fail"
RULES: tuple[str, ...] = (
    "renders",
    "prompt-prefix",
    "generation-parity",
    "end-of-turn",
    "system-once",
    "bos-once",
    "truncation",
)


class PreflightError(SafetuneError, RuntimeError):
    """The preflight found a template or data defect; the message names the template, rule and a row."""


@dataclass
class PreflightSettings:
    """Knobs of one preflight run (``template.preflight`` in the config)."""

    sample: int = field(default=64, metadata={"help": "Rows checked (a seeded random sample); 0 or less = all rows."})
    max_length: int | None = field(default=1024, metadata={"help": "trainer.max_length; None disables truncation."})
    truncation_mode: str = field(default="keep_start", metadata={"help": "trainer.truncation_mode (TRL)."})
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "trainer.max_completion_length: responses are cut to this on purpose; not counted as lost."},
    )
    max_truncated_fraction: float = field(
        default=0.05, metadata={"help": "Fail when more than this fraction of sampled rows would lose response tokens."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the row sample."})
    force: bool = field(default=False, metadata={"help": "Report failures but do not stop (experts only)."})


@dataclass
class RuleResult:
    """The outcome of one rule over the sampled rows."""

    rule: str = field(metadata={"help": "Rule name, one of RULES."})
    status: str = field(default=PASS, metadata={"help": "'pass', 'warn' or 'fail'."})
    failing: int = field(default=0, metadata={"help": "Sampled rows that break the rule."})
    checked: int = field(default=0, metadata={"help": "Sampled rows the rule looked at."})
    example_id: str | None = field(default=None, metadata={"help": "Id of the first row that breaks the rule."})
    detail: str = field(default="", metadata={"help": "What is wrong in the example row, and how to fix it."})


@dataclass
class PreflightReport:
    """All rule results, length statistics and one example row, ready to print or to raise on."""

    template: str = field(metadata={"help": "The template name or path the formatter resolved."})
    results: list[RuleResult] = field(default_factory=list, metadata={"help": "One result per rule, in RULES order."})
    n_rows: int = field(default=0, metadata={"help": "Rows available."})
    n_sampled: int = field(default=0, metadata={"help": "Rows checked."})
    stats: dict[str, dict[str, float]] = field(default_factory=dict, metadata={"help": "Token-length statistics."})
    truncation: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Truncated/dropped counts, tokens lost."}
    )
    example: TokenizedPair | None = field(default=None, metadata={"help": "The row shown fully rendered."})
    probe: TemplateProbe | None = field(default=None, metadata={"help": "What the template was found to do."})

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def passed(self) -> bool:
        return not self.failures

    def result(self, rule: str) -> RuleResult:
        return next(r for r in self.results if r.rule == rule)

    def error_message(self) -> str:
        lines = [f"Chat-template preflight failed for template {self.template!r} ({self.n_sampled} rows checked):"]
        for r in self.failures:
            lines.append(f"  - rule '{r.rule}': {r.failing}/{r.checked} rows, e.g. row {r.example_id!r}: {r.detail}")
        lines.append(
            "Fix the template (template=<name> or template.name=/path/to/t.jinja) or the data; to train anyway set "
            "template.preflight.force=true (safetune-data preflight --force)."
        )
        return "\n".join(lines)

    def raise_if_failed(self, force: bool = False) -> None:
        if self.passed:
            return
        if force:
            log.warning("Preflight failures overridden by force=true:\n%s", self.error_message())
            return
        raise PreflightError(self.error_message())


# ----------------------------------------------------------------------------------------------------- rules


class _Rule:
    def __init__(self, name: str):
        self.result = RuleResult(name)

    def check(self, row_id: str, detail: str | None) -> None:
        """Record one row: ``detail`` is None when the row passes."""
        self.result.checked += 1
        if detail is None:
            return
        self.result.failing += 1
        if self.result.example_id is None:
            self.result.example_id, self.result.detail = row_id, detail
        self.result.status = FAIL


def _decode(tok: Any, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def _check_prefix(tok: Any, t: TokenizedPair) -> str | None:
    for name, full in (("chosen", t.prompt_chosen_ids), ("rejected", t.prompt_rejected_ids)):
        if full[: len(t.prompt_ids)] != t.prompt_ids:
            from trl.data_utils import common_prefix_length

            k = common_prefix_length(t.prompt_ids, full)
            return (
                f"the prompt tokenised alone ends {_decode(tok, t.prompt_ids[k:])!r} but inside prompt+{name} the "
                f"same position reads {_decode(tok, full[k : k + max(1, len(t.prompt_ids) - k)])!r}; TRL would train "
                "on a context generation never sees. Make the generation prompt a text prefix of the rendered answer "
                "turn and end it on a token boundary (e.g. no trailing space)."
            )
    return None


def _check_eot(tok: Any, t: TokenizedPair, probe: TemplateProbe) -> str | None:
    closers = set(probe.eot_ids)
    if tok.eos_token_id is not None:
        closers.add(tok.eos_token_id)
    if not probe.eot_ids:
        return (
            f"the template closes an assistant turn with {probe.turn_trailer!r}, which holds no end-of-turn or EOS "
            "special token of this tokenizer, so the model never learns to stop. Use a template whose end-of-turn "
            "marker is a special token of this tokenizer (or add eos_token after the assistant message)."
        )
    for name, ids in (("chosen", t.chosen_ids), ("rejected", t.rejected_ids)):
        where = [i for i, x in enumerate(ids) if x in closers]
        if len(where) != 1:
            return (
                f"the {name} response holds {len(where)} end-of-turn/EOS tokens, expected exactly 1 "
                f"(response tokens end {_decode(tok, ids[-12:])!r}). "
                + ("Remove end-of-turn text from the data or the template's doubled marker." if where else "")
            )
        if _decode(tok, ids[where[0] + 1 :]).strip():
            return f"the {name} response continues after its end-of-turn token: {_decode(tok, ids[where[0] :])!r}."
    return None


def _check_system(text: str, prompt: list[Message], probe: TemplateProbe) -> str | None:
    explicit = prompt[0]["content"].strip() if prompt and prompt[0]["role"] == "system" else ""
    defaults = {d: text.count(d) for d in probe.default_systems if d != explicit and d not in explicit}
    n_default = sum(defaults.values())
    if explicit:
        n = text.count(explicit)
        if n == 0:
            return f"the system prompt {explicit[:60]!r} was dropped by the template."
        if n > 1:
            return f"the system prompt {explicit[:60]!r} appears {n} times in the rendered conversation."
        if n_default:
            d = next(k for k, v in defaults.items() if v)
            return (
                f"the template adds its default system prompt {d[:60]!r} on top of the explicit one "
                f"{explicit[:60]!r}; use a template that replaces its default when a system message is given."
            )
    elif n_default > 1:
        return f"the template's default system prompt appears {n_default} times in the rendered conversation."
    return None


def _check_bos(tok: Any, t: TokenizedPair, probe: TemplateProbe) -> str | None:
    bos = tok.bos_token_id
    if bos is None:
        return None
    for name, ids in (("prompt", t.prompt_ids), ("prompt+chosen", t.prompt_chosen_ids)):
        if len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            return f"{name} starts with BOS twice ({tok.bos_token!r}{tok.bos_token!r}); the template and tokenizer both add it."
        if not probe.bos_per_turn and ids.count(bos) > 1:
            return f"{name} holds BOS {tok.bos_token!r} {ids.count(bos)} times; expected once at the start."
    return None


def _truncation(t: TokenizedPair, s: PreflightSettings) -> tuple[int, bool]:
    """(response tokens TRL's collator would cut from the worse of chosen/rejected, whole row dropped)."""
    if s.max_length is None:
        return 0, False
    p = t.split
    if s.truncation_mode == "keep_start" and p >= s.max_length:
        return max(len(t.chosen_ids), len(t.rejected_ids)), True
    lost = 0
    for comp in (t.chosen_ids, t.rejected_ids):
        comp = comp[: s.max_completion_length] if s.max_completion_length else comp
        over = p + len(comp) - s.max_length
        if over > 0:
            lost = max(
                lost, min(over, len(comp)) if s.truncation_mode == "keep_start" else max(0, len(comp) - s.max_length)
            )
    return lost, False


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {
        "min": v[0],
        "mean": round(statistics.fmean(v), 1),
        "p50": v[len(v) // 2],
        "p95": v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))],
        "max": v[-1],
    }


def sample_rows(examples: Sequence[PreferenceExample], n: int, seed: int = 0) -> list[PreferenceExample]:
    """A seeded sample of ``n`` rows in their original order (all rows when ``n`` <= 0 or n >= len)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def run_preflight(
    formatter: ChatFormatter, examples: Sequence[PreferenceExample], settings: PreflightSettings | None = None
) -> PreflightReport:
    """Check a sample of ``examples`` against every rule; never raises for defects (see ``raise_if_failed``)."""
    s = settings or PreflightSettings()
    tok = formatter.tokenizer
    rows = sample_rows(examples, s.sample, s.seed)
    report = PreflightReport(template=str(formatter.template), n_rows=len(examples), n_sampled=len(rows))
    rules = {name: _Rule(name) for name in RULES}
    try:
        probe = probe_template(formatter)
    except Exception as e:  # the template cannot even render a one-turn conversation
        rules["renders"].check("<probe>", f"the template fails on a plain user/assistant exchange: {e}")
        report.results = [r.result for r in rules.values()]
        return report
    report.probe = probe
    lengths: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    lost_tokens: list[int] = []
    n_trunc = n_drop = 0
    first_bad: TokenizedPair | None = None
    for ex in rows:
        row = formatter.to_trl(ex)
        try:
            t = formatter.tokenize_like_trl(row)
            text = render(formatter, row["prompt"] + row["chosen"])
            gen_ids = formatter.generation_ids(ex.prompt)
        except Exception as e:
            rules["renders"].check(ex.id, f"rendering raised {type(e).__name__}: {e}")
            continue
        rules["renders"].check(ex.id, None)
        if report.example is None:
            report.example = t
        checks = {
            "prompt-prefix": _check_prefix(tok, t),
            "generation-parity": None
            if gen_ids == t.prompt_ids
            else (
                f"generation tokenises the prompt to {len(gen_ids)} tokens, training to {len(t.prompt_ids)}; "
                f"they first differ at token {next((i for i, (a, b) in enumerate(zip(gen_ids, t.prompt_ids)) if a != b), min(len(gen_ids), len(t.prompt_ids)))}."
            ),
            "end-of-turn": _check_eot(tok, t, probe),
            "system-once": _check_system(text, row["prompt"], probe),
            "bos-once": _check_bos(tok, t, probe),
        }
        for name, detail in checks.items():
            rules[name].check(ex.id, detail)
            if detail is not None and first_bad is None:
                first_bad = t
        lost, dropped = _truncation(t, s)
        detail = None
        if dropped:
            n_drop += 1
            detail = f"the prompt alone is {t.split} tokens >= max_length={s.max_length}; TRL drops the row."
        elif lost:
            n_trunc += 1
            detail = f"max_length={s.max_length} cuts {lost} response tokens (prompt {t.split} tokens)."
        if lost:
            lost_tokens.append(lost)
        rules["truncation"].check(ex.id, detail)
        lengths["prompt"].append(t.split)
        lengths["chosen"].append(len(t.chosen_ids))
        lengths["rejected"].append(len(t.rejected_ids))
    trunc = rules["truncation"].result
    if trunc.failing:
        frac = n_trunc / max(1, trunc.checked)
        too_many = n_drop > 0 or frac > s.max_truncated_fraction
        trunc.status = FAIL if too_many else WARN
        trunc.detail += (
            f" In total {n_trunc} rows cut, {n_drop} dropped ({frac:.0%} of sampled rows; limit "
            f"{s.max_truncated_fraction:.0%}). Raise trainer.max_length or filter long rows."
        )
    report.truncation = {
        "rows_truncated": n_trunc,
        "rows_dropped": n_drop,
        "tokens_lost_mean": round(statistics.fmean(lost_tokens), 1) if lost_tokens else 0,
        "tokens_lost_max": max(lost_tokens, default=0),
    }
    report.stats = {k: _describe(v) for k, v in lengths.items()}
    if lengths["chosen"]:
        diffs = [c - r for c, r in zip(lengths["chosen"], lengths["rejected"])]
        report.stats["chosen-rejected"] = _describe(diffs)
    report.example = first_bad or report.example
    report.results = [r.result for r in rules.values()]
    return report


# ----------------------------------------------------------------------------------------------------- report


def token_boundaries(tokenizer: Any, ids: Sequence[int], split: int | None = None, sep: str = "|") -> str:
    """Plain text of ``ids`` with every token boundary marked by ``sep`` and the completion start by ' ||> '."""
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    if split is None:
        return sep.join(pieces)
    return sep.join(pieces[:split]) + " ||> " + sep.join(pieces[split:])


# ----------------------------------------------------------------------------------------------------- entry points


def settings_from_cfg(template_cfg: Any, trainer_cfg: Any = None) -> PreflightSettings:
    """``template.preflight`` + ``trainer.max_length`` / ``trainer.truncation_mode`` -> settings."""
    pf = dict((template_cfg or {}).get("preflight") or {})
    tr = dict(trainer_cfg or {})
    known = {k: v for k, v in pf.items() if k in PreflightSettings.__dataclass_fields__ and v is not None}
    unknown = sorted(set(pf) - set(PreflightSettings.__dataclass_fields__) - {"enabled"})
    if unknown:
        raise InputError(
            f"template.preflight has unknown key(s) {unknown}; expected enabled, "
            f"{', '.join(PreflightSettings.__dataclass_fields__)}."
        )
    s = PreflightSettings(**known)
    s.max_length = tr.get("max_length", s.max_length)
    s.truncation_mode = tr.get("truncation_mode") or s.truncation_mode
    s.max_completion_length = tr.get("max_completion_length")
    return s


def preflight_training_rows(
    formatter: ChatFormatter,
    examples: Sequence[PreferenceExample],
    template_cfg: Any,
    trainer_cfg: Any,
    *,
    on_report: Callable[[PreflightReport, Any], None] | None = None,
) -> PreflightReport | None:
    """The check training runs before loading the model; raises PreflightError unless template.preflight.force.

    ``on_report(report, tokenizer)`` receives the report before any failure is raised (the train CLI prints it)."""
    if not bool(((template_cfg or {}).get("preflight") or {}).get("enabled", True)):
        log.warning("template.preflight.enabled=false: chat-template preflight skipped.")
        return None
    settings = settings_from_cfg(template_cfg, trainer_cfg)
    report = run_preflight(formatter, examples, settings)
    if on_report is not None:
        on_report(report, formatter.tokenizer)
    else:
        log.info("Chat-template preflight: %s", "passed" if report.passed else "failed")
    report.raise_if_failed(settings.force)
    return report
