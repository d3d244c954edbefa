"""trainer.release_memory_every: garbage caught in reference cycles is collected and the heap trimmed every N steps."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

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


def _overrides(tiny_model_dir, tiny_prefs, tmp_path, every, name=None):
    return [
        f"model.name_or_path={tiny_model_dir}",
        f"data.sources=[{{name: tiny, _target_: safetune.data.sources.triplets.load, path: {tiny_prefs}}}]",
        "trainer.max_steps=4",
        "trainer.per_device_train_batch_size=2",
        "trainer.report_to=[]",
        f"trainer.release_memory_every={every}",
        f"run_dir={tmp_path / (name or f'run{every}')}",
        f"paths.cache={tmp_path / (name or '') / 'cache'}",
    ]


def _cfg(tiny_model_dir, tiny_prefs, tmp_path, every):
    return compose("train", _overrides(tiny_model_dir, tiny_prefs, tmp_path, every))


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


def _run(code: str, env_value: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if env_value is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = env_value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_command_line_tools_cap_the_onednn_primitive_cache_unless_the_user_set_it():
    code = "import os, safetune.cli; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    from safetune.core.memory import ONEDNN_CACHE_CAPACITY

    assert _run(code, None) == str(ONEDNN_CACHE_CAPACITY)
    assert _run(code, "7") == "7"


SHAPES = """
import sys
{setup}
import torch
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) // 1024
w = torch.randn(576, 1536, dtype=torch.{dtype})
r0 = rss()
for n in range(100, 1100):  # 1,000 matmul shapes, as packed training batches of every length produce
    torch.randn(n, 576, dtype=torch.{dtype}) @ w
print(rss() - r0)
"""


@pytest.mark.slow
def test_capping_the_primitive_cache_bounds_memory_over_many_matmul_shapes():
    from safetune.core.precision import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("no native bf16 here: training runs fp32 matmuls, which do not build oneDNN primitives")
    dtype = "bfloat16"
    uncapped = int(_run(SHAPES.format(setup="", dtype=dtype), None))
    # set after torch is imported, before its first matmul, as the command-line tools do (a small cap makes the
    # difference plain; the tools' default is ONEDNN_CACHE_CAPACITY)
    setup = "import torch\nfrom safetune.core.memory import bound_onednn_cache\nbound_onednn_cache(16)"
    capped = int(_run(SHAPES.format(setup=setup, dtype=dtype), None))
    if uncapped < 300:
        pytest.skip(f"this CPU's {dtype} matmuls cache little ({uncapped} MB over 1,000 shapes): nothing to bound")
    assert capped < 0.75 * uncapped, (capped, uncapped)


FAULTS = """
import resource
{setup}
import torch
torch.ones(1)
faults = []
for _ in range(40):  # a step's big temporaries: allocated, filled, freed, again
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 1024 * 1024)  # 64 MB
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(sum(faults[20:]))  # the steady state (the heap settles within the first few blocks)
"""


def _run_env(code: str, **env_values: str) -> str:
    import os
    import subprocess
    import sys

    from safetune.core.memory import ALLOCATOR_ENV, MALLOC_TUNING_ENV

    tuning = (ALLOCATOR_ENV, *MALLOC_TUNING_ENV)
    env = {k: v for k, v in os.environ.items() if k not in tuning} | env_values
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_keeping_freed_pages_stops_large_temporaries_from_faulting_in_again():
    from safetune.core.memory import _libc

    if _libc() is None:
        pytest.skip("malloc here is not glibc's")
    default = int(_run_env(FAULTS.format(setup="")))
    kept = int(_run_env(FAULTS.format(setup="from safetune.core.memory import keep_freed_pages\nkeep_freed_pages()")))
    # 20 x 64 MB = 327,680 pages faulted in again when each block is unmapped on free; none once the heap keeps them
    assert default > 200_000, default
    assert kept < default / 4, (kept, default)
    opted_out = int(
        _run_env(
            FAULTS.format(setup="from safetune.core.memory import keep_freed_pages\nkeep_freed_pages()"),
            SAFETUNE_MALLOC="default",
        )
    )
    assert opted_out > 200_000, opted_out


@pytest.mark.parametrize("keep", [True, False])
def test_trainer_keep_freed_pages_applies_the_allocator_setting_before_training(
    tiny_model_dir, tiny_prefs, tmp_path, monkeypatch, keep
):
    from safetune.core import memory
    from safetune.train.recipe import run_train

    calls: list[int] = []
    monkeypatch.setattr(memory, "keep_freed_pages", lambda: calls.append(1) or True)
    cfg = _cfg(tiny_model_dir, tiny_prefs, tmp_path, 0)
    cfg.trainer.keep_freed_pages = keep
    run_train(cfg)
    assert calls == ([1] if keep else [])


TRAIN = """
import json, sys
sys.path[:0] = {paths!r}
from conftest import compose
from safetune.train.recipe import run_train
metrics, _ = run_train(compose("train", {overrides!r}))
print(json.dumps([metrics["final/loss"], metrics["final/rewards/margins"]]))
"""


def test_training_with_freed_pages_kept_gives_the_same_numbers(tiny_model_dir, tiny_prefs, tmp_path):
    """Reused heap blocks are not zeroed like fresh pages: a tensor read before it is written would change the
    numbers. Same run, each in its own process (the setting is process-wide), glibc's default vs kept pages."""
    import json

    from safetune.core.memory import _libc

    if _libc() is None:
        pytest.skip("malloc here is not glibc's")
    here = Path(__file__).resolve().parent
    paths = [str(here.parent), str(here)]
    results = {}
    for name, env in (("kept", {}), ("default", {"SAFETUNE_MALLOC": "default"})):
        overrides = _overrides(tiny_model_dir, tiny_prefs, tmp_path, 0, name=name)
        out = _run_env(TRAIN.format(paths=paths, overrides=overrides), **env)
        results[name] = json.loads(out.splitlines()[-1])
    assert results["kept"] == results["default"], results


def test_bad_keep_freed_pages_is_a_config_error(tiny_model_dir, tiny_prefs, tmp_path):
    from safetune.core.config import ConfigError
    from safetune.train.dpo_config import safetune_trainer_options

    cfg = _cfg(tiny_model_dir, tiny_prefs, tmp_path, 0)
    cfg.trainer.keep_freed_pages = "sometimes"
    with pytest.raises(ConfigError, match="trainer.keep_freed_pages must be true or false"):
        safetune_trainer_options(dict(cfg.trainer))


def test_the_allocator_setting_leaves_a_users_own_malloc_tuning_alone():
    code = "from safetune.core.memory import keep_freed_pages; print(keep_freed_pages())"
    from safetune.core.memory import _libc

    if _libc() is None:
        assert _run_env(code) == "False"
        return
    assert _run_env(code) == "True"
    assert _run_env(code, MALLOC_MMAP_THRESHOLD_="1048576") == "False"
    assert _run_env(code, SAFETUNE_MALLOC="off") == "False"
