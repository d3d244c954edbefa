"""Step-0 sanity check and the in-training safety callback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_tiny import compose_train, make_tiny_model, train_overrides, write_tiny_data

from safetune.train.dpo_config import SanityCheck, SanityCheckError
from safetune.train.recipe import run_train


def test_sanity_check_accepts_step0_and_names_the_problem_otherwise():
    ok = SanityCheck().check(torch.tensor([0.0, 1e-4]), torch.tensor([-1e-4, 0.0]), beta=0.1)
    assert abs(ok["sanity/dpo_sigmoid_loss"] - math.log(2)) < 1e-4 and abs(ok["sanity/reward_margin"]) < 1e-4
    with pytest.raises(SanityCheckError, match=r"differ from the reference's by up to 3") as err:
        SanityCheck().check(torch.tensor([3.0]), torch.tensor([-2.0]), beta=0.1)
    assert "reward margin is 0.5" in str(err.value)
    with pytest.raises(SanityCheckError):
        SanityCheck().check(torch.tensor([float("nan")]), torch.tensor([0.0]), beta=0.1)
    assert SanityCheck(max_abs_logratio=5.0).check(torch.tensor([3.0]), torch.tensor([0.0]), beta=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_model(d / "model"), write_tiny_data(d / "data.jsonl")


def test_reference_that_is_not_the_starting_policy_stops_the_run(tiny, tmp_path):
    model_dir, data = tiny
    other = make_tiny_model(tmp_path / "other", seed=1)  # a different model as "reference"
    from safetune.train import recipe as train_mod

    real_load = train_mod.load_model
    calls = []

    def load_second_as_other(spec, path=None, **kw):
        calls.append(path)
        return real_load(spec, str(other) if len(calls) == 2 else path, **kw)

    train_mod.load_model = load_second_as_other
    try:
        cfg = compose_train(
            train_overrides(
                model_dir,
                data,
                tmp_path / "run",
                "peft=none",
                "peft.reference=explicit",
                "trainer.max_steps=1",
                "trainer.precompute_ref_log_probs=false",
                # fp32: its 0.05-nat tolerance sees two tiny random models apart; bf16's looser 1.0 may not
                "trainer.bf16=false",
            )
        )
        with pytest.raises(SanityCheckError, match="not the starting policy"):
            run_train(cfg)
    finally:
        train_mod.load_model = real_load
    assert not (tmp_path / "run" / "adapter").exists()


def test_safety_callback_logs_refusal_and_over_refusal_during_training(tiny, tmp_path):
    model_dir, data = tiny
    cfg = compose_train(
        train_overrides(
            model_dir,
            data,
            tmp_path / "run",
            "trainer.max_steps=2",
            "safety_callback.enabled=true",
            "safety_callback.every_n_steps=1",
            "safety_callback.limit_per_group=1",
            "safety_callback.max_new_tokens=4",
            f"ref_cache.dir={tmp_path / 'rc'}",
        )
    )
    run_train(cfg)
    history = json.loads((tmp_path / "run" / "safety_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    logged = [h for h in json.loads((tmp_path / "run" / "log_history.json").read_text()) if "safety/refusal_rate" in h]
    assert len(logged) == 2  # reached the tracker's log history
    from safetune.eval.suites import load_suite

    cats = {
        p.group for p in load_suite({"name": "h", "_target_": "safetune.eval.suites.bundled.load", "path": "harmful"})
    }
    for h in history:
        per_cat = {k.split("/", 2)[2] for k in h if k.startswith("safety/refusal/")}
        assert per_cat == cats
        assert 0.0 <= h["safety/refusal_rate"] <= 1.0 and 0.0 <= h["safety/over_refusal_rate"] <= 1.0
        assert any(k.startswith("safety/over_refusal/") for k in h)
