"""The demo wiring: overrides reach the right stage, and the demo composes train/eval/compare configs."""

from __future__ import annotations

from safetune.demo import _split_overrides


def test_overrides_are_routed_by_top_level_key():
    train, ev = _split_overrides(
        [
            "trainer.beta=0.2",
            "data=pku_saferlhf",
            "+peft.top_layers=4",
            "eval/suite=bundled",
            "limit_per_group=2",
            "generation.max_new_tokens=8",
            "model.dtype=float32",
            "template=chatml",
        ]
    )
    assert train == [
        "trainer.beta=0.2",
        "data=pku_saferlhf",
        "+peft.top_layers=4",
        "model.dtype=float32",
        "template=chatml",
    ]
    assert ev == [
        "eval/suite=bundled",
        "limit_per_group=2",
        "generation.max_new_tokens=8",
        "model.dtype=float32",
        "template=chatml",
    ]
