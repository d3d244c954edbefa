"""A chat model that answers batches of conversations greedily: the backend of every LLM-based judge.

``LLMJudge`` (refusal verdicts) and ``LLMRubricJudge`` (refusal quality) both ask a chat model; this class loads
it once with the project's own loader (safetensors, ``trust_remote_code=False``) and generator (batched,
length-sorted, left-padded), or wraps an injected ``generate_fn`` (tests, API clients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safetune.core.errors import InputError

Conversation = list[dict[str, str]]


class ChatModel:
    """``__call__(conversations) -> replies`` for a hub id / local directory, or an injected function."""

    def __init__(
        self,
        model: str | None = None,
        *,
        generate_fn: Callable[[list[Conversation]], list[str]] | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        dtype: str = "auto",
        model_cfg: dict[str, Any] | None = None,
        owner: str = "judge",
    ):
        if generate_fn is None and not model:
            raise InputError(f"{owner} needs `model` (a chat model hub id or local dir) or a `generate_fn`.")
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self.model_cfg = dict(model_cfg or {})
        self._generate_fn = generate_fn

    @property
    def name(self) -> str:
        return str(self.model_name or getattr(self._generate_fn, "__name__", "custom"))

    def _load(self) -> Callable[[list[Conversation]], list[str]]:
        import torch

        from safetune.core.formatting import ChatFormatter
        from safetune.core.modeling import ModelSpec, load_model, load_tokenizer, resolve_model_path
        from safetune.eval.generate import generate_texts

        spec = ModelSpec.from_cfg({"name_or_path": self.model_name, "dtype": self.dtype, **self.model_cfg})
        path = resolve_model_path(spec)
        tok = load_tokenizer(spec, path)
        model = load_model(spec, path)
        if torch.cuda.is_available():
            model = model.to("cuda")
        fmt = ChatFormatter(tok)

        def fn(conversations: list[Conversation]) -> list[str]:
            texts = [fmt.render_prompt(c) for c in conversations]
            return generate_texts(model, tok, texts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)

        return fn

    def replies(
        self, pairs: list[tuple[str, str]], build: Callable[[str, str], Conversation]
    ) -> list[tuple[str, str, str]]:
        """``(prompt, response, reply)`` for each (prompt, response) pair, asked as ``build(prompt, response)``."""
        answers = self([build(p, r) for p, r in pairs])
        return [(p, r, a) for (p, r), a in zip(pairs, answers)]

    def __call__(self, conversations: list[Conversation]) -> list[str]:
        if not conversations:
            return []
        if self._generate_fn is None:
            self._generate_fn = self._load()
        out = self._generate_fn(conversations)
        if len(out) != len(conversations):
            raise RuntimeError(f"{self.name}: generate returned {len(out)} replies for {len(conversations)} inputs.")
        return out
