"""Every option of every config group composes with each root config that uses the group; every ``_target_``
imports; experiments add no key a stage does not read; typos fail before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from safetune.cli.common import check_config
from safetune.core.config import ConfigError, iter_targets
from tests.conftest import CONF_DIR, compose

ROOTS = ["train", "eval", "compare", "export", "synthesize"]
# group -> the root configs whose defaults list it (every group directory of conf/ must be listed here)
GROUP_ROOTS = {
    "model": ["train", "eval", "synthesize"],
    "data": ["train"],
    "template": ["train", "eval", "synthesize"],
    "peft": ["train"],
    "trainer": ["train"],
    "paths": ROOTS,
    "eval/suite": ["train", "eval"],  # train: the in-training safety callback's suite
    "eval/judge": ["train", "eval", "synthesize"],
    "eval/rubric": ["eval"],
    "eval/retention": ["eval"],
    "experiment": ["train", "eval", "compare", "synthesize"],
    "synth": ["synthesize"],
}
# groups composed from inside other configs (shared blocks and per-stage experiment parts), not selected directly
INNER_GROUPS = {"data/policy", "template/preflight", "experiment/train", "experiment/eval", "experiment/synth"}
NOT_HYDRA = {"accelerate", "hydra", "hydra/job_logging"}  # accelerate's own YAML; Hydra's settings
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def group_dirs() -> set[str]:
    conf = Path(CONF_DIR)
    return {str(p.parent.relative_to(conf)) for p in conf.rglob("*.yaml") if p.parent != conf}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def keys(node, prefix: str = "") -> set[str]:
    """Every dict key path of a plain config (lists are values)."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            out |= keys(v, path)
    return out


def test_every_group_directory_is_covered():
    assert group_dirs() - NOT_HYDRA == set(GROUP_ROOTS) | INNER_GROUPS


def test_there_are_experiments():
    assert "demo" in EXPERIMENTS and "none" in EXPERIMENTS


@pytest.mark.parametrize(
    "root,group,option", [(r, g, o) for g, roots in GROUP_ROOTS.items() for o in options(g) for r in roots]
)
def test_every_option_of_every_group_composes_with_each_root(root, group, option, monkeypatch):
    monkeypatch.setenv("SAFETUNE_CUSTOM_SUITE", "my_prompts.jsonl")  # suites whose path has no default
    monkeypatch.setenv("SAFETUNE_JBB_ARTIFACTS", "pair.json")
    package = {("train", "eval/suite"): "@safety_callback.suite", ("train", "eval/judge"): "@safety_callback.judge"}
    cfg = compose(root, [f"{group}{package.get((root, group), '')}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    check_config(cfg)  # every _target_ imports
    if root == "train":
        assert cfg.trainer.beta > 0 and cfg.data.sources and cfg.safety_callback.suite.suites
    if root == "eval":
        assert cfg.eval.suite.suites and "_target_" in cfg.eval.judge and "_target_" in cfg.eval.rubric
    if root == "synthesize":
        assert cfg.synth.pools and all("_target_" in p for p in cfg.synth.pools)


@pytest.mark.parametrize("root", ["train", "eval", "compare", "synthesize"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_add_no_key_a_stage_does_not_read(root, experiment):
    plain = OmegaConf.to_container(compose(root, []), resolve=False)
    with_exp = OmegaConf.to_container(compose(root, [f"experiment={experiment}"]), resolve=False)
    assert keys(with_exp) - keys(plain) == set(), f"experiment={experiment} adds keys {root} does not read"


def test_the_demo_experiment_splits_into_stage_deltas():
    train = compose("train", ["experiment=demo"])
    ev = compose("eval", ["experiment=demo"])
    assert train.name == ev.name == "demo"
    assert train.trainer.beta == 0.02 and train.peft.top_layers == 10
    # the curated set plus the on-policy pairs the demo synthesises first (the synthesis stage's own delta)
    targets = [s["_target_"] for s in train.data.sources]
    assert all(t.endswith("triplets.load") for t in targets[:2]) and targets[2:] == ["safetune.synth.source.load"] * 3
    # synthesis answers a seeded sample of each pool, large enough for the pairs training draws from it
    pools = {p.name: p.max_rows for p in compose("synthesize", ["experiment=demo"]).synth.pools}
    drawn = {"harmful": 0, "lookalikes": 0, "ordinary": 0}
    for s in train.data.sources[2:]:
        for pool in s.get("pools") or (["harmful"] if "harmful_complied" in s.rules else []):
            drawn[pool] += s.max_rows
    assert drawn == {"harmful": 250, "lookalikes": 250, "ordinary": 100}
    assert all(pools[k] >= 1.2 * n for k, n in drawn.items()), (pools, drawn)
    assert ev.limit_per_group is None and ev.generation.max_new_tokens == 40 and ev.generation.batch_size == 128
    assert "trainer" not in ev and "generation" not in train


def test_every_data_source_suite_judge_and_set_is_a_target():
    for root, group in (("train", "data"), ("eval", "eval/suite"), ("eval", "eval/judge"), ("eval", "eval/rubric")):
        for o in options(group):
            cfg = OmegaConf.to_container(compose(root, [f"{group}={o}"]), resolve=False)
            node = {"data": cfg.get("data"), "eval/suite": cfg["eval"]["suite"] if root == "eval" else None}.get(
                group, cfg["eval"][group.split("/")[1]] if root == "eval" else None
            )
            assert list(iter_targets(node)), f"{group}={o} has no _target_"
    for o in options("eval/retention"):
        ret = OmegaConf.to_container(compose("eval", [f"eval/retention={o}"]).eval.retention, resolve=False)
        assert all("_target_" in v for v in ret.values() if isinstance(v, dict))


def test_a_target_typo_fails_at_compose_time_with_the_valid_ones():
    cfg = compose("eval", ["eval.judge._target_=safetune.eval.judges.keyword.KeywrdJudge"])
    with pytest.raises(ConfigError, match=r"(?s)eval\.judge\._target_.*KeywordJudge.*Valid targets for eval\.judge"):
        check_config(cfg)
    cfg = compose("train", ["data.sources.0._target_=safetune.data.sources.triplet.load"])
    with pytest.raises(ConfigError, match=r"Did you mean 'safetune\.data\.sources\.triplets\.load'"):
        check_config(cfg)


def test_typo_in_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose("train", ["trainer.betaa=0.2"])
    with pytest.raises(ConfigCompositionException):
        compose("eval", ["generation.max_new_tokenz=3"])


def test_shared_blocks_are_composed_once():
    """The preflight block and the data policy live in one file each; every template and data config composes them."""
    for o in options("template"):
        assert "max_truncated_fraction" not in (Path(CONF_DIR) / "template" / f"{o}.yaml").read_text()
        assert compose("train", [f"template={o}"]).template.preflight.sample == 64
    for o in options("data"):
        assert "leakage_suites" not in (Path(CONF_DIR) / "data" / f"{o}.yaml").read_text()
        assert list(compose("train", [f"data={o}"]).data.leakage_suites) == ["suite://harmful", "suite://benign"]


def test_unknown_trainer_field_fails_before_model_load():
    from safetune.train.dpo_config import ConfigError, build_dpo_config

    cfg = compose("train", ["+trainer.max_prompt_length=128"])
    with pytest.raises(ConfigError, match="max_prompt_length"):
        build_dpo_config(OmegaConf.to_container(cfg.trainer, resolve=True), "/tmp/unused")


def test_dpo_config_built_from_resolved_config():
    from safetune.train.dpo_config import build_dpo_config

    cfg = compose("train", ["trainer.beta=0.25", "trainer.loss_type=[ipo]"])
    args = build_dpo_config(OmegaConf.to_container(cfg.trainer, resolve=True), "/tmp/unused")
    assert args.beta == 0.25 and args.loss_type == ["ipo"]
    assert args.gradient_checkpointing is False  # safetune default, TRL's is True
    assert args.precompute_ref_log_probs is True
