"""Real 2-process DDP on CPU (gloo) through `accelerate launch`: one run directory, one adapter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_accelerate_two_processes_one_run_dir(tiny_model_dir, tiny_prefs, tmp_path):
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "SAFETUNE_RUNS": str(runs_dir), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        "-m",
        "safetune.train",
        f"model.name_or_path={tiny_model_dir}",
        f"data.sources=[{{name: tiny, _target_: safetune.data.sources.triplets.load, path: {tiny_prefs}}}]",
        "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.report_to=[]",
        "name=ddp",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dirs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, f"expected one run dir, got {run_dirs}"
    adapters = list(run_dirs[0].rglob("adapter_model.safetensors"))
    assert len(adapters) == 1
    import json

    info = json.loads((run_dirs[0] / "safetune_run.json").read_text())
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    history = json.loads((run_dirs[0] / "log_history.json").read_text())
    assert sum("loss" in h for h in history) == 2


def test_fsdp_or_deepspeed_config_without_gpu_is_reported(monkeypatch):
    from safetune.train.recipe import _warn_if_strategy_downgraded

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    msg = _warn_if_strategy_downgraded("MULTI_CPU")
    assert msg is not None and "asks for FSDP" in msg and "MULTI_CPU" in msg
    assert _warn_if_strategy_downgraded("FSDP") is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "asks for DEEPSPEED" in _warn_if_strategy_downgraded("MULTI_CPU")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert _warn_if_strategy_downgraded("NO") is None
