"""Refusal judges. Each has ``judge(prompt: str, response: str) -> Verdict`` and ``judge_many``."""

from __future__ import annotations

from typing import Any

from safetune.core.schema import Verdict


class Judge:
    name = "judge"

    def judge(self, prompt: str, response: str) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def judge_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        return [self.judge(p, r) for p, r in pairs]


def build_judge(cfg: Any) -> Judge:
    from hydra.utils import instantiate

    return instantiate(cfg)
