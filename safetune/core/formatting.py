"""Chat formatting shared by training and generation.

One :class:`ChatFormatter` decides the chat template (the tokenizer's own, a named
template shipped in ``safetune/templates``, or a user ``.jinja`` file) and the
optional system prompt. Training hands TRL conversational rows built by
:meth:`ChatFormatter.to_trl`; TRL renders them with ``tokenizer.chat_template``,
which the formatter has set. Generation renders prompts with
:meth:`ChatFormatter.render_prompt` — the same template, the same system prompt,
so the prompt text a model is trained on is the prompt text it is evaluated on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import Message, PreferenceExample

TEMPLATE_DIR = Path(str(resources.files("safetune") / "core" / "templates"))


class TemplateError(InputError):
    """The chat template cannot be resolved or renders a conversation incorrectly."""


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def resolve_template(name: str, tokenizer: Any) -> str:
    """Return Jinja source for ``name``: 'auto', a shipped template name, or a path to a .jinja file."""
    if name in (None, "", "auto"):
        tmpl = getattr(tokenizer, "chat_template", None)
        if not tmpl:
            raise TemplateError(
                "template=auto but the tokenizer has no chat template. Pick a named one "
                f"(template=<{'|'.join(available_templates())}>) or give a .jinja path (template.name=/path/to/t.jinja)."
            )
        return tmpl
    p = Path(name).expanduser()
    if p.suffix == ".jinja" or p.exists():
        if not p.is_file():
            raise TemplateError(f"Chat template file {p} does not exist.")
        return p.read_text()
    shipped = TEMPLATE_DIR / f"{name}.jinja"
    if not shipped.is_file():
        raise TemplateError(
            f"Unknown chat template {name!r}; expected 'auto', one of {available_templates()}, or a .jinja path."
        )
    return shipped.read_text()


@dataclass
class TokenizedPair:
    """One preference row tokenised the way TRL's DPOTrainer tokenises it."""

    id: str = field(metadata={"help": "Row id."})
    prompt_ids: list[int] = field(metadata={"help": "Prompt alone, rendered with add_generation_prompt=True."})
    prompt_chosen_ids: list[int] = field(metadata={"help": "Prompt + chosen reply as one conversation."})
    prompt_rejected_ids: list[int] = field(metadata={"help": "Prompt + rejected reply as one conversation."})
    split: int = field(
        metadata={"help": "Where TRL starts the completion: the shortest common prefix with the prompt."}
    )

    @property
    def chosen_ids(self) -> list[int]:
        return self.prompt_chosen_ids[self.split :]

    @property
    def rejected_ids(self) -> list[int]:
        return self.prompt_rejected_ids[self.split :]


@dataclass
class ChatFormatter:
    """Applies one chat template and system prompt to prompts for both training and generation."""

    tokenizer: Any
    template: str = field(default="auto", metadata={"help": "'auto', a named template, or a .jinja path."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "Prepended as a system message when the prompt has none."}
    )

    def __post_init__(self) -> None:
        self.template_source = resolve_template(self.template, self.tokenizer)
        # TRL and generation both read tokenizer.chat_template: set it once, here.
        self.tokenizer.chat_template = self.template_source

    @classmethod
    def from_cfg(cls, tokenizer: Any, cfg: Any) -> ChatFormatter:
        cfg = cfg or {}  # other keys (e.g. 'preflight') belong to safetune.train.preflight
        return cls(tokenizer, template=cfg.get("name", "auto") or "auto", system_prompt=cfg.get("system_prompt"))

    def prompt_messages(self, messages: list[Message]) -> list[Message]:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def render_prompt(self, messages: list[Message]) -> str:
        """Prompt text up to and including the assistant header the model continues from."""
        return self.tokenizer.apply_chat_template(
            self.prompt_messages(messages), tokenize=False, add_generation_prompt=True
        )

    def render_conversation(self, messages: list[Message], response: str) -> str:
        """Full text of prompt + one assistant response, as training sees it."""
        return self.tokenizer.apply_chat_template(
            [*self.prompt_messages(messages), {"role": "assistant", "content": response}], tokenize=False
        )

    def generation_ids(self, messages: list[Message]) -> list[int]:
        """Token ids generation feeds the model: :meth:`render_prompt` tokenised without extra special tokens."""
        return list(self.tokenizer(self.render_prompt(messages), add_special_tokens=False)["input_ids"])

    def tokenize_like_trl(self, row: dict[str, Any]) -> TokenizedPair:
        """Tokenise a :meth:`to_trl` row exactly as ``trl.DPOTrainer`` (1.16) does for conversational data.

        The prompt is rendered with ``add_generation_prompt=True``; prompt+chosen and prompt+rejected are rendered
        as full conversations; the completion starts where the prompt and each full sequence stop agreeing.
        """
        from trl.data_utils import common_prefix_length

        def ids(messages: list[Message], **kw: Any) -> list[int]:
            out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, tools=None, **kw)
            return list(out["input_ids"])

        prompt_ids = ids(row["prompt"], add_generation_prompt=True)
        chosen_full = ids(row["prompt"] + row["chosen"])
        rejected_full = ids(row["prompt"] + row["rejected"])
        split = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
        return TokenizedPair(str(row.get("id", "")), prompt_ids, chosen_full, rejected_full, split)

    def to_trl(self, ex: PreferenceExample) -> dict[str, Any]:
        """A TRL conversational preference row (prompt/chosen/rejected as message lists) plus an id column."""
        return {
            "id": ex.id,
            "prompt": self.prompt_messages(ex.prompt),
            "chosen": [{"role": "assistant", "content": ex.chosen}],
            "rejected": [{"role": "assistant", "content": ex.rejected}],
        }


# ----------------------------------------------------------------------------------------------------- probing

_PROBE_USER = "PREFLIGHT-USER-7d41"
_PROBE_REPLY = "PREFLIGHT-REPLY-7d41"
_PROBE_SYSTEM = "PREFLIGHT-SYSTEM-7d41"


@dataclass
class TemplateProbe:
    """What the template itself does, learnt by rendering marker conversations."""

    eot_ids: list[int] = field(default_factory=list, metadata={"help": "Special ids closing an assistant turn."})
    turn_trailer: str = field(default="", metadata={"help": "Text the template puts after an assistant message."})
    default_systems: list[str] = field(
        default_factory=list, metadata={"help": "Built-in default system prompts found in the template source."}
    )
    bos_per_turn: bool = field(default=False, metadata={"help": "The BOS token also opens every turn (e.g. ChatML)."})


def render(formatter: ChatFormatter, messages: list[Message], **kw: Any) -> str:
    return formatter.tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    return ids


def default_system_prompts(template_source: str) -> list[str]:
    """Natural-language runs of six or more words in the template's string literals: built-in system prompts."""
    found: list[str] = []
    for literal in re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", template_source):
        text = (literal[0] or literal[1]).replace("\\n", "\n")
        for run in re.findall(r"[A-Za-z][^<>{}\n|\[\]]*", text):
            run = run.strip()
            if len(run.split()) >= 6 and run not in found:
                found.append(run)
    return found


def probe_template(formatter: ChatFormatter) -> TemplateProbe:
    """Render marker conversations to learn the end-of-turn token, default system prompts and BOS usage."""
    tok = formatter.tokenizer
    probe = TemplateProbe(default_systems=default_system_prompts(formatter.template_source))
    user = [{"role": "user", "content": _PROBE_USER}]
    full = render(formatter, [*user, {"role": "assistant", "content": _PROBE_REPLY}])
    trailer = full[full.index(_PROBE_REPLY) + len(_PROBE_REPLY) :] if _PROBE_REPLY in full else ""
    probe.turn_trailer = trailer
    special = special_ids(tok)
    trailer_ids = tok(trailer, add_special_tokens=False)["input_ids"] if trailer else []
    probe.eot_ids = sorted({i for i in trailer_ids if i in special})
    bos = tok.bos_token_id
    if bos is not None:
        one = tok.apply_chat_template(user, tokenize=True, return_dict=True)["input_ids"]
        three = [*user, {"role": "assistant", "content": _PROBE_REPLY}, {"role": "user", "content": _PROBE_USER}]
        more = tok.apply_chat_template(three, tokenize=True, return_dict=True)["input_ids"]
        probe.bos_per_turn = list(more).count(bos) > list(one).count(bos)
    return probe
