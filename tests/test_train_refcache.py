"""Shared reference log-prob cache: reused when only beta/loss/lr change, recomputed when anything else does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_tiny import compose_train, make_tiny_model, train_overrides, write_tiny_data

from safetune.train.dpo_config import SanityCheckError
from safetune.train.recipe import run_train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_model(d / "model"), write_tiny_data(d / "data.jsonl")


def _run(tiny, tmp_path: Path, name: str, *extra: str):
    model, data = tiny
    cfg = compose_train(
        train_overrides(
            model, data, tmp_path / name, "trainer.max_steps=1", f"ref_cache.dir={tmp_path / 'refcache'}", *extra
        )
    )
    return run_train(cfg)[0]


def test_cache_reused_across_beta_and_loss_and_recomputed_when_inputs_change(tiny, tmp_path):
    first = _run(tiny, tmp_path, "a", "trainer.beta=0.1", "trainer.loss_type=sigmoid")
    assert (first["ref_cache/hits"], first["ref_cache/misses"]) == (0, 1)
    files = sorted((tmp_path / "refcache").glob("*.safetensors"))
    assert len(files) == 1

    # Only beta, loss type and learning rate differ: served from disk, and still the exact step-0 reference.
    again = _run(tiny, tmp_path, "b", "trainer.beta=0.3", "trainer.loss_type=ipo", "trainer.learning_rate=1e-3")
    assert (again["ref_cache/hits"], again["ref_cache/misses"]) == (1, 0)
    assert again["sanity/max_abs_logratio"] < 1e-3
    assert len(list((tmp_path / "refcache").glob("*.safetensors"))) == 1

    # max_length and the template change what the reference scores: new keys, recomputed.
    shorter = _run(tiny, tmp_path, "c", "trainer.max_length=56", "template.preflight.force=true")
    assert (shorter["ref_cache/hits"], shorter["ref_cache/misses"]) == (0, 1)
    system = _run(tiny, tmp_path, "d", "+template.system_prompt='You are careful.'")
    assert (system["ref_cache/hits"], system["ref_cache/misses"]) == (0, 1)
    assert len(list((tmp_path / "refcache").glob("*.safetensors"))) == 3


def test_stale_cache_entry_is_caught_by_the_step0_sanity_check(tiny, tmp_path):
    _run(tiny, tmp_path, "a")
    (entry,) = (tmp_path / "refcache").glob("*.safetensors")
    t = load_file(str(entry))
    save_file({k: v + 5.0 for k, v in t.items()}, str(entry))  # as if the base weights changed under the same key
    with pytest.raises(SanityCheckError, match="ln 2") as err:
        _run(tiny, tmp_path, "b")
    assert "stale reference" in str(err.value)


def test_cache_disabled_computes_every_time(tiny, tmp_path):
    m = _run(tiny, tmp_path, "a", "ref_cache.enabled=false")
    assert "ref_cache/hits" not in m
    assert not (tmp_path / "refcache").exists()
    assert abs(m["sanity/dpo_sigmoid_loss"] - torch.log(torch.tensor(2.0)).item()) < 1e-3


def test_trl_model_hash_is_skipped_with_the_cache_and_kept_without(tiny, tmp_path, monkeypatch):
    """TRL hashes every tensor of the model to name its reference-pass file (minutes for 7B models); with the shared
    cache its key names the reference instead, and TRL's own hash comes back for runs without the cache."""
    from trl.trainer import dpo_trainer as trl_dpo

    calls: list[int] = []
    original = trl_dpo.hash_module

    def counting(module):
        calls.append(1)
        return original(module)

    monkeypatch.setattr(trl_dpo, "hash_module", counting)
    m = _run(tiny, tmp_path, "cached")
    assert m["ref_cache/misses"] == 1 and calls == []
    assert trl_dpo.hash_module is counting  # restored after the trainer's __init__
    again = _run(tiny, tmp_path, "cached_again", "trainer.beta=0.3")
    assert (again["ref_cache/hits"], again["ref_cache/misses"]) == (1, 0) and calls == []
    # the same numbers as with TRL's hash: the step-0 reference equals the policy either way
    assert abs(again["sanity/dpo_sigmoid_loss"] - m["sanity/dpo_sigmoid_loss"]) < 1e-6
    plain = _run(tiny, tmp_path, "uncached", "ref_cache.enabled=false")
    assert calls == [1]
    assert abs(plain["sanity/dpo_sigmoid_loss"] - m["sanity/dpo_sigmoid_loss"]) < 1e-6


def test_reference_key_names_everything_but_the_data():
    from safetune.train.refcache import RefLogpCache

    parts = {"model": {"name_or_path": "m"}, "precision": "fp32", "data_content_hash": "a", "max_length": 64}
    key = RefLogpCache(dir=Path("x"), key_parts=parts).reference_key()
    assert key == RefLogpCache(dir=Path("y"), key_parts={**parts, "data_content_hash": "b"}).reference_key()
    for change in ({"precision": "bf16"}, {"max_length": 32}, {"model": {"name_or_path": "other"}}):
        assert RefLogpCache(dir=Path("x"), key_parts={**parts, **change}).reference_key() != key


def test_max_completion_length_cuts_responses_and_keys_the_cache(tiny, tmp_path):
    """safetune's trainer.max_completion_length (TRL 1.x has none): responses keep their first N tokens only,
    and the reference cache keys on N (the reference scores fewer tokens)."""
    full = _run(tiny, tmp_path, "full")
    cut = _run(tiny, tmp_path, "cut", "trainer.max_completion_length=3")
    assert (cut["ref_cache/hits"], cut["ref_cache/misses"]) == (0, 1)  # a new key, not the full-length entry
    entries = {p.name: load_file(str(p)) for p in (tmp_path / "refcache").glob("*.safetensors")}
    assert len(entries) == 2
    # 3 response tokens score a log-prob much closer to 0 than whole responses (each token adds a negative term)
    sums = sorted(float(sum(v.sum() for v in t.values())) for t in entries.values())
    assert sums[0] < sums[1] < 0
    assert full["sanity/max_abs_logratio"] < 1.0 and cut["sanity/max_abs_logratio"] < 1.0
    with pytest.raises(ValueError, match="max_completion_length must be a positive integer"):
        _run(tiny, tmp_path, "bad", "trainer.max_completion_length=0")


def test_precision_is_part_of_the_cache_key(tiny, tmp_path):
    """The reference pass runs under the trainer's autocast, so bf16 and fp32 reference log-probs never mix."""
    from safetune.core.precision import bf16_supported

    default = _run(tiny, tmp_path, "default")  # bf16 where the CPU has it natively, else fp32
    fp32 = _run(tiny, tmp_path, "fp32", "trainer.bf16=false")
    expected = (0, 1) if bf16_supported() else (1, 0)
    assert (fp32["ref_cache/hits"], fp32["ref_cache/misses"]) == expected
    assert default["ref_cache/misses"] == 1


def test_rows_shared_with_an_earlier_run_are_not_recomputed(tmp_path):
    """A run whose data adds rows to an earlier run's (a new round's pairs on top of the previous data) computes the
    reference pass for the new rows only, and gets the same log-probs as a run that computes everything."""
    from train_tiny import TINY_ROWS

    model = make_tiny_model(tmp_path / "model")
    small = write_tiny_data(tmp_path / "small.jsonl")
    grown = write_tiny_data(tmp_path / "grown.jsonl", n=len(TINY_ROWS) + 4)

    def run(data: Path, name: str, cache: Path):
        cfg = compose_train(
            train_overrides(model, data, tmp_path / name, "trainer.max_steps=1", f"ref_cache.dir={cache}")
        )
        return run_train(cfg)[0]

    first = run(small, "small", tmp_path / "cache")
    assert first["ref_cache/rows_reused"] == 0 and first["ref_cache/rows_computed"] > 0
    second = run(grown, "grown", tmp_path / "cache")
    n_old = first["ref_cache/rows_computed"]
    assert second["ref_cache/rows_reused"] == n_old  # every row of the first run, read back
    assert second["ref_cache/rows_computed"] == 4  # only the added rows computed
    assert second["sanity/max_abs_logratio"] < 1e-3  # reference == policy at step 0: the merged values line up
    fresh = run(grown, "fresh", tmp_path / "fresh-cache")
    assert fresh["ref_cache/rows_reused"] == 0
    assert fresh["ref_cache/rows_computed"] == second["ref_cache/rows_reused"] + second["ref_cache/rows_computed"]

    def stored(cache: Path) -> dict[str, tuple[float, float]]:
        out = {}
        for meta in cache.glob("*.json"):
            t = load_file(str(meta.with_suffix(".safetensors")))
            keys = json.loads(meta.read_text())["row_keys"]
            out.update(zip(keys, zip(t["ref_chosen_logps"].tolist(), t["ref_rejected_logps"].tolist())))
        return out

    merged, computed = stored(tmp_path / "cache"), stored(tmp_path / "fresh-cache")
    assert set(computed) <= set(merged)
    for k, (c, r) in computed.items():
        assert abs(merged[k][0] - c) < 1e-4 and abs(merged[k][1] - r) < 1e-4
