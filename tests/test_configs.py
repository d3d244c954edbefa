"""Every root config composes with every experiment; typos fail before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose

ROOTS = ["train", "eval", "compare"]
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
GROUPS = {
    g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
    for g in ("model", "data", "template", "peft", "trainer")
}


def test_there_are_experiments():
    assert "demo" in EXPERIMENTS


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_compose_root_with_experiment(root, experiment):
    overrides = [f"experiment={experiment}"] if experiment else []
    cfg = compose(root, overrides)
    # Resolve everything except mandatory values a user must supply (e.g. model=hub name_or_path).
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    if root == "train":
        assert cfg.trainer.beta > 0 and cfg.data.sources
    if root == "eval":
        assert cfg.eval.suite.suites and "_target_" in cfg.eval.judge


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_for_train(group, option):
    cfg = compose("train", [f"{group}={option}"])
    assert cfg[group] is not None


def test_typo_in_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose("train", ["trainer.betaa=0.2"])
    with pytest.raises(ConfigCompositionException):
        compose("eval", ["generation.max_new_tokenz=3"])


def test_unknown_trainer_field_fails_before_model_load():
    from safetune.dpo import ConfigError, build_dpo_config

    cfg = compose("train", ["+trainer.max_prompt_length=128"])
    with pytest.raises(ConfigError, match="max_prompt_length"):
        build_dpo_config(OmegaConf.to_container(cfg.trainer, resolve=True), "/tmp/unused")


def test_dpo_config_built_from_resolved_config():
    from safetune.dpo import build_dpo_config

    cfg = compose("train", ["trainer.beta=0.25", "trainer.loss_type=[ipo]"])
    args = build_dpo_config(OmegaConf.to_container(cfg.trainer, resolve=True), "/tmp/unused")
    assert args.beta == 0.25 and args.loss_type == ["ipo"]
    assert args.gradient_checkpointing is False  # safetune default, TRL's is True
    assert args.precompute_ref_log_probs is True
