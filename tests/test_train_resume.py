"""Kill a real training subprocess midway, resume with resume=auto, and match an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import make_tiny_model, tiny_env, train_overrides, write_tiny_data

from safetune.train.callbacks import COMPLETE_MARKER, last_complete_checkpoint

MAX_STEPS = 8


def _cmd(model: Path, data: Path, run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "safetune.train",
        *train_overrides(
            model,
            data,
            run_dir,
            f"trainer.max_steps={MAX_STEPS}",
            "trainer.save_strategy=steps",
            "trainer.save_steps=2",
            "trainer.warmup_steps=0",
            "trainer.learning_rate=2e-3",
            "peft.lora_dropout=0.0",
            f"ref_cache.dir={cache}",
            *extra,
        ),
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_tiny_data(tmp_path / "data.jsonl", n=16)  # 8 steps of 2 rows
    env = tiny_env(tmp_path)
    cache = tmp_path / "refcache"

    # Uninterrupted reference run.
    subprocess.run(_cmd(model, data, tmp_path / "full", cache), env=env, check=True, capture_output=True, timeout=600)
    full = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))

    # Same run, SIGKILLed as soon as its first complete checkpoint exists.
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(model, data, run_dir, cache, "resume=auto"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    trainer_dir = run_dir / "trainer"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any((p / COMPLETE_MARKER).is_file() for p in trainer_dir.glob("checkpoint-*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; the test needs a slower run"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    last = last_complete_checkpoint(trainer_dir, quarantine=False)
    assert last is not None and int(last.name.split("-")[1]) < MAX_STEPS

    # A checkpoint that was being written when the crash came: newer, but without the completion marker.
    fake = trainer_dir / f"checkpoint-{MAX_STEPS - 1}"
    fake.mkdir(exist_ok=True)
    (fake / "trainer_state.json").write_text("{")
    assert last_complete_checkpoint(trainer_dir, quarantine=False) == last

    # Resume: same command. Continues from the last complete checkpoint, never from the partial one.
    out = subprocess.run(
        _cmd(model, data, run_dir, cache, "resume=auto"), env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not fake.exists() and list(trainer_dir.glob(f"incomplete-checkpoint-{MAX_STEPS - 1}-*"))
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].startswith("checkpoint-")
    resumed = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == full.keys()
    moved = max((full[k] - load_file(str(last / "adapter_model.safetensors"))[k]).abs().max().item() for k in full)
    assert moved > 1e-4  # training after the checkpoint changed the adapter, so matching is not trivial
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-6)
    assert not list((run_dir / "adapter").glob("*.bin"))  # no pickles in the run dir
