"""Any hub (or local) sequence-classification model as a refusal judge, through a transformers pipeline.

The default is ``protectai/distilroberta-base-rejection-v1`` (labels NORMAL / REJECTION). ``label_map`` maps the
model's labels onto refusal | compliance | partial; a label missing from it is an error naming the label.
"""

from __future__ import annotations

from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import VERDICT_LABELS, Verdict
from safetune.eval.judges import Judge


class HFClassifierJudge(Judge):
    name = "hf_classifier"

    def __init__(
        self,
        model: str = "protectai/distilroberta-base-rejection-v1",
        label_map: dict[str, str] | None = None,
        input_format: str = "{response}",
        batch_size: int = 16,
        max_length: int = 512,
        device: Any = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ):
        self.model = model
        self.label_map = dict(label_map or {"REJECTION": "refusal", "NORMAL": "compliance"})
        bad = {k: v for k, v in self.label_map.items() if v not in VERDICT_LABELS}
        if bad:
            raise InputError(f"eval.judge.label_map values must be in {VERDICT_LABELS}; got {bad}.")
        if "{response}" not in input_format:
            raise InputError(
                f"eval.judge.input_format must contain '{{response}}' (and may contain '{{prompt}}'); got {input_format!r}."
            )
        self.input_format = input_format
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self._pipe = None

    @property
    def pipe(self):
        if self._pipe is None:
            import torch
            from transformers import pipeline

            device = self.device if self.device is not None else (0 if torch.cuda.is_available() else -1)
            self._pipe = pipeline(
                "text-classification",
                model=self.model,
                revision=self.revision,
                device=device,
                trust_remote_code=self.trust_remote_code,
                model_kwargs={"use_safetensors": True},
            )
        return self._pipe

    def judge_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if not pairs:
            return []
        texts = [self.input_format.format(prompt=p, response=r) for p, r in pairs]
        outs = self.pipe(texts, batch_size=self.batch_size, truncation=True, max_length=self.max_length)
        verdicts = []
        for o in outs:
            raw = o["label"]
            if raw not in self.label_map:
                raise InputError(
                    f"classifier {self.model!r} returned label {raw!r}, which eval.judge.label_map does not map; "
                    f"add it, e.g. label_map: {{{raw}: refusal}} (known: {sorted(self.label_map)})."
                )
            verdicts.append(Verdict(self.label_map[raw], float(o["score"]), self.name, raw))
        return verdicts

    def judge(self, prompt: str, response: str) -> Verdict:
        return self.judge_many([(prompt, response)])[0]
