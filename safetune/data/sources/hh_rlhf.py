"""Anthropic hh-rlhf dialogue transcripts -> :class:`PreferenceExample`.

Source: hub ``Anthropic/hh-rlhf`` with ``data_dir`` (harmless-base, helpful-base, helpful-online,
helpful-rejection-sampled, red-team-attempts is not a preference set) or a local ``.jsonl.gz``.

Each row holds two full transcripts, ``chosen`` and ``rejected``, written as
``\\n\\nHuman: ...\\n\\nAssistant: ...`` turns. They are parsed into chat messages; the prompt is
every turn before the final assistant turn and must be identical in both transcripts; the final
assistant turns are the competing replies.

Rows that do not parse (no assistant turn, turns out of order, empty turn, prompts that differ
between chosen and rejected) are counted per reason in the result's ``skipped`` and logged — not
silently dropped, and not a crash. ``strict=True`` raises on the first such row instead. Rows with a
missing field or a non-string field are input errors and raise (or are collected with
``on_error="collect"``).

Also accepted: the Llama-2 layout with separate ``prompt``/``chosen``/``rejected`` columns where the
prompt is ``<s>[INST] <<SYS>>..<</SYS>> user [/INST] reply </s><s>[INST] user [/INST]`` and the
responses are plain text, and the same layout with an hh-style ``Human:/Assistant:`` prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from safetune.core.schema import Message, PreferenceExample, SchemaError, canonical_category, check_tactic
from safetune.data.io import Loaded, check_on_error, load_rows, text_field

log = logging.getLogger(__name__)

HUB_ID = "Anthropic/hh-rlhf"
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_INST = re.compile(r"\[INST\](.*?)\[/INST\](.*?)(?=\[INST\]|\Z)", re.S)
_SYS = re.compile(r"^\s*<<SYS>>(.*?)<</SYS>>", re.S)
_ROLE = {"Human": "user", "Assistant": "assistant"}


class TranscriptError(SchemaError):
    """A transcript that cannot be turned into a prompt and a final reply (counted, not fatal by default)."""


def parse_transcript(text: str, *, where: str = "", field: str = "chosen") -> list[Message]:
    """Split an hh-rlhf transcript into user/assistant messages, checking order and emptiness."""
    if not text.startswith("\n\n") and text.lstrip().startswith(("Human:", "Assistant:")):
        text = "\n\n" + text.lstrip()
    parts = _TURN.split(text)
    if parts[0].strip():
        raise TranscriptError(
            f"{where}: field '{field}' has text before the first '\\n\\nHuman:' turn: {parts[0][:60]!r}."
        )
    if len(parts) < 3:
        raise TranscriptError(f"{where}: field '{field}' has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns.")
    messages: list[Message] = []
    for i in range(1, len(parts), 2):
        role, content = _ROLE[parts[i]], parts[i + 1].strip()
        expected = "user" if not messages or messages[-1]["role"] == "assistant" else "assistant"
        if role != expected:
            raise TranscriptError(
                f"{where}: field '{field}' turn {len(messages) + 1} is {parts[i]!r} where "
                f"{'Human' if expected == 'user' else 'Assistant'!r} was expected (turns must alternate, Human first)."
            )
        if not content:
            raise TranscriptError(f"{where}: field '{field}' turn {len(messages) + 1} ({parts[i]}) is empty.")
        messages.append({"role": role, "content": content})
    return messages


def _split(messages: list[Message], where: str, field: str) -> tuple[list[Message], str]:
    if messages[-1]["role"] != "assistant":
        raise TranscriptError(f"{where}: field '{field}' has no final Assistant turn (it ends with a Human turn).")
    return messages[:-1], messages[-1]["content"]


def parse_llama2_prompt(text: str, *, where: str = "") -> list[Message]:
    """Parse ``<s>[INST] <<SYS>>sys<</SYS>> u1 [/INST] a1 </s><s>[INST] u2 [/INST]`` into messages."""
    segs = _INST.findall(text)
    if not segs:
        raise TranscriptError(f"{where}: field 'prompt' has no '[INST] ... [/INST]' turn.")
    messages: list[Message] = []
    for i, (user, reply) in enumerate(segs):
        m = _SYS.match(user)
        if m:
            if i or messages:
                raise TranscriptError(f"{where}: field 'prompt' has a <<SYS>> block after the first turn.")
            messages.append({"role": "system", "content": m.group(1).strip()})
            user = user[m.end() :]
        user = user.strip()
        reply = reply.replace("</s>", "").replace("<s>", "").strip()
        if not user:
            raise TranscriptError(f"{where}: field 'prompt' turn {i + 1} has an empty [INST] block.")
        messages.append({"role": "user", "content": user})
        if i < len(segs) - 1:
            if not reply:
                raise TranscriptError(
                    f"{where}: field 'prompt' turn {i + 1} has no assistant reply before the next [INST]."
                )
            messages.append({"role": "assistant", "content": reply})
        elif reply:
            raise TranscriptError(
                f"{where}: field 'prompt' must end with '[/INST]' (a user turn), but text follows it."
            )
    return messages


def _str_field(row: dict[str, Any], key: str, where: str) -> str:
    return text_field(row, key, where, what="a transcript string", needs="an hh-rlhf row needs 'chosen' and 'rejected'")


def row_to_example(
    row: dict[str, Any],
    *,
    where: str,
    source: str = "hh_rlhf",
    index: int = 0,
    categories: Sequence[str] = (),
    tactic: str = "none",
) -> PreferenceExample:
    chosen_t, rejected_t = _str_field(row, "chosen", where), _str_field(row, "rejected", where)
    if "prompt" in row:  # Llama-2 / split layout: the responses are plain text
        prompt_t = _str_field(row, "prompt", where)
        if "[INST]" in prompt_t:
            prompt = parse_llama2_prompt(prompt_t, where=where)
            layout = "llama2"
        else:
            prompt = parse_transcript(re.sub(r"\n\nAssistant:\s*$", "", prompt_t), where=where, field="prompt")
            if prompt[-1]["role"] != "user":
                raise TranscriptError(f"{where}: field 'prompt' must end with a Human turn.")
            layout = "split"
        chosen, rejected = chosen_t.replace("</s>", "").strip(), rejected_t.replace("</s>", "").strip()
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not text:
                raise TranscriptError(f"{where}: field '{name}' is empty after removing special tokens.")
    else:
        prompt, chosen = _split(parse_transcript(chosen_t, where=where, field="chosen"), where, "chosen")
        prompt_r, rejected = _split(parse_transcript(rejected_t, where=where, field="rejected"), where, "rejected")
        if prompt != prompt_r:
            n = next((i for i, (a, b) in enumerate(zip(prompt, prompt_r)) if a != b), min(len(prompt), len(prompt_r)))
            raise TranscriptError(
                f"{where}: chosen and rejected transcripts differ before the final Assistant turn (first at turn {n + 1}); "
                "the prompt must be shared."
            )
        layout = "transcript"
    return PreferenceExample(
        id=f"{source}-{index}",
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        categories=[canonical_category(c, where=f"{where}: option 'categories'") for c in categories],
        tactic=check_tactic(tactic, where=f"{where}: option 'tactic'"),
        source=source,
        metadata={"location": where, "layout": layout, "turns": len(prompt) + 1},
    )


def convert(
    rows: Iterable[tuple[str, dict[str, Any]]],
    *,
    source: str = "hh_rlhf",
    categories: Sequence[str] = (),
    tactic: str = "none",
    strict: bool = False,
    on_error: str = "raise",
) -> Loaded:
    check_on_error(on_error)
    out = Loaded()
    for i, (where, row) in enumerate(rows):
        try:
            out.append(row_to_example(row, where=where, source=source, index=i, categories=categories, tactic=tactic))
        except TranscriptError as e:
            if strict:
                raise
            out.skip("unparseable transcript: " + _reason(str(e)), where)
        except SchemaError as e:
            if on_error == "raise":
                raise
            out.errors.append((where, str(e)))
    if out.skipped:
        log.warning(
            "%s: %d row(s) did not parse and were left out: %s",
            source,
            sum(out.skipped.values()),
            "; ".join(f"{r} x{n} (e.g. {out.skipped_at[r][0]})" for r, n in out.skipped.most_common()),
        )
    return out


def _reason(msg: str) -> str:
    """A short reason key (no location, no row-specific text) for counting."""
    text = msg.split(": ", 1)[-1]
    text = re.sub(r"turn \d+", "turn N", text)
    text = re.sub(r"\(first at turn N\); ", "", text)
    return re.sub(r"\s+", " ", re.sub(r": '.*$|\(.*\)", "", text)).strip().rstrip(".")


def load(
    path: str = HUB_ID,
    *,
    categories: Sequence[str] = (),
    tactic: str = "none",
    strict: bool = False,
    source: str | None = None,
    on_error: str = "raise",
    **hub: Any,
) -> Loaded:
    """Load hh-rlhf from the hub (``data_dir``, ``split``, ``revision``) or a local ``.jsonl(.gz)`` / parquet path."""
    if source is None:
        tag = hub.get("data_dir") or (
            Path(path).parent.name if Path(path).suffix in {".gz", ".jsonl", ".json", ".parquet"} else ""
        )
        source = "hh_rlhf" + (f":{tag}" if tag else "")
    opts = {"source": source, "categories": categories, "tactic": tactic, "strict": strict, "on_error": on_error}
    return load_rows(path, lambda rows: convert(rows, **opts), on_error=on_error, **{"split": "train", **hub})
