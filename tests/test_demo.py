"""The demo wiring: overrides reach the stages that accept them (found from the configs, no key lists)."""

from __future__ import annotations

import pytest

from safetune.cli.demo import route_overrides
from safetune.core.config import ConfigError


def test_overrides_are_routed_to_the_stages_whose_configs_accept_them():
    routed = route_overrides(
        [
            "trainer.beta=0.2",
            "data=pku_saferlhf",
            "+trainer.train_sampling_strategy=group_by_length",
            "eval/suite=bundled",
            "limit_per_group=2",
            "generation.max_new_tokens=8",
            "model.dtype=float32",
            "template=chatml",
        ],
        {"train": ["experiment=demo"], "eval": ["experiment=demo"], "synthesize": ["experiment=demo"]},
    )
    assert routed["train"] == [
        "trainer.beta=0.2",
        "data=pku_saferlhf",
        "+trainer.train_sampling_strategy=group_by_length",
        "model.dtype=float32",
        "template=chatml",
    ]
    assert routed["eval"] == [
        "eval/suite=bundled",
        "limit_per_group=2",
        "generation.max_new_tokens=8",
        "model.dtype=float32",
        "template=chatml",
    ]


def test_an_override_no_stage_accepts_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"'trainer\.betaa=0\.2' fits none of"):
        route_overrides(["trainer.betaa=0.2"])


def test_synthesis_options_go_to_the_synthesis_stage_only():
    routed = route_overrides(["synth.samples=2", "model.dtype=float32"])
    assert routed["synthesize"] == ["synth.samples=2", "model.dtype=float32"]
    assert routed["train"] == routed["eval"] == ["model.dtype=float32"]
