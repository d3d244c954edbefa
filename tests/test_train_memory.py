"""trainer.release_memory_every: garbage caught in reference cycles is collected and the heap trimmed every N steps."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from tests.conftest import compose


def test_release_memory_frees_tensors_held_only_by_a_reference_cycle():
    from safetune.core.memory import release_memory

    class Node:
        pass

    gc.disable()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        a.t = torch.ones(256, 256)
        ref = weakref.ref(a.t)
        del a, b
        assert ref() is not None, "the cycle's tensor should survive reference counting"
        release_memory()
        assert ref() is None, "release_memory did not collect the cycle"
    finally:
        gc.enable()


def _cfg(tiny_model_dir, tiny_prefs, tmp_path, every):
    return compose(
        "train",
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.sources=[{{name: tiny, _target_: safetune.data.sources.triplets.load, path: {tiny_prefs}}}]",
            "trainer.max_steps=4",
            "trainer.per_device_train_batch_size=2",
            "trainer.report_to=[]",
            f"trainer.release_memory_every={every}",
            f"run_dir={tmp_path / f'run{every}'}",
            f"paths.cache={tmp_path / 'cache'}",
        ],
    )


@pytest.mark.parametrize(("every", "expected_steps"), [(2, [2, 4]), (0, [])])
def test_training_releases_memory_every_n_steps(
    tiny_model_dir, tiny_prefs, tmp_path, monkeypatch, every, expected_steps
):
    from safetune.train import callbacks
    from safetune.train.recipe import run_train

    steps: list[int] = []
    seen = {}
    real = callbacks.ReleaseMemoryCallback.on_step_end

    def spy(self, args, state, control, **kw):
        seen["step"] = state.global_step
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(callbacks.ReleaseMemoryCallback, "on_step_end", spy)
    monkeypatch.setattr(callbacks, "release_memory", lambda: steps.append(seen["step"]))
    run_train(_cfg(tiny_model_dir, tiny_prefs, tmp_path, every))
    assert steps == expected_steps


@pytest.mark.parametrize("bad", ["-1", "often", "1.5"])
def test_bad_release_memory_every_is_a_config_error(tiny_model_dir, tiny_prefs, tmp_path, bad):
    from safetune.core.config import ConfigError
    from safetune.train.dpo_config import safetune_trainer_options

    cfg = _cfg(tiny_model_dir, tiny_prefs, tmp_path, bad)
    with pytest.raises(ConfigError, match="trainer.release_memory_every"):
        safetune_trainer_options(dict(cfg.trainer))
