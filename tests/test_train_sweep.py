"""Sweeps: Hydra multirun with each job as its own subprocess, per-job eval, summary, compare; accelerate configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_tiny import make_tiny_model, tiny_env, train_overrides, write_tiny_data

from safetune import CONF_DIR
from safetune.train.sweep import SweepError, handle_multirun_job, job_command

ACCEL = Path(CONF_DIR) / "accelerate"


@pytest.mark.slow
def test_subprocess_sweep_trains_evaluates_and_summarises(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_tiny_data(tmp_path / "data.jsonl")
    env = tiny_env(tmp_path)
    over = [o for o in train_overrides(model, data, tmp_path / "unused") if not o.startswith("run_dir=")]
    cmd = [
        sys.executable,
        "-m",
        "safetune.train",
        "-m",
        *over,
        "trainer.max_steps=2",
        "trainer.warmup_steps=0",
        f"ref_cache.dir={tmp_path / 'rc'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "sweep.launcher=python",
        "sweep.parallel=2",
        "sweep.eval=true",
        'sweep.eval_overrides=["limit_per_group=1","generation.max_new_tokens=4"]',
        "trainer.beta=0.05,0.3",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        assert (sweep / job / "adapter" / "adapter_model.safetensors").is_file()
        assert (sweep / job / "train.log").is_file()  # ran as its own process
        assert (sweep / job / "eval" / "results.json").is_file()
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    rows = {r["job"]: r for r in summary["jobs"]}
    assert {rows["0"]["beta"], rows["1"]["beta"]} == {0.05, 0.3}
    for r in rows.values():
        assert 0.0 <= r["refusal_rate"] <= 1.0 and 0.0 <= r["over_refusal_rate"] <= 1.0
        assert r["final_loss"] is not None and r["reward_accuracy"] is not None
    assert "0.05" in (sweep / "sweep_summary.md").read_text()

    from safetune.eval.compare import compare

    cmp = compare([str(sweep)])  # safetune-compare accepts the sweep directory
    assert sorted(Path(d).parent.name for d in cmp["dirs"]) == ["0", "1"]
    assert cmp["rows"] and all(len(r["rates"]) == 2 for r in cmp["rows"])


def test_accelerate_job_command_gets_its_own_port_and_config(tmp_path):
    cmd = job_command(
        "accelerate",
        ["trainer.beta=0.1", "sweep.parallel=2", "run_dir=x"],
        tmp_path / "3",
        str(ACCEL / "ddp.yaml"),
        port=29612,
    )
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1].endswith("ddp.yaml")
    assert cmd[cmd.index("--main_process_port") + 1] == "29612"
    tail = cmd[cmd.index("safetune.train") + 1 :]
    assert tail == ["trainer.beta=0.1", f"run_dir={tmp_path / '3'}", "sweep.launcher=inline"]
    with pytest.raises(SweepError, match="launcher"):
        job_command("slurm", [], tmp_path)
    auto = job_command("accelerate", [], tmp_path)
    assert int(auto[auto.index("--main_process_port") + 1]) > 0  # a free port picked per job


def test_multirun_under_accelerate_launch_is_refused(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["trainer.beta=0.1"], return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.runtime.output_dir = "/tmp/sweep/0"
    HydraConfig.instance().set_config(cfg)
    try:
        monkeypatch.setenv("WORLD_SIZE", "4")
        with pytest.raises(SweepError, match="every rank would run every job"):
            handle_multirun_job(cfg)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    "name,kind",
    [
        ("single.yaml", "NO"),
        ("ddp.yaml", "MULTI_GPU"),
        ("zero2.yaml", "DEEPSPEED"),
        ("zero3.yaml", "DEEPSPEED"),
        ("fsdp.yaml", "FSDP"),
    ],
)
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCEL / name))
    assert str(cfg.distributed_type).split(".")[-1] == kind
    raw = yaml.safe_load((ACCEL / name).read_text())
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(name[4])
    if kind == "FSDP":
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_sweep_experiment_composes_a_beta_by_loss_grid():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sweep_beta"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["trainer.beta"].split(",") == ["0.05", "0.1", "0.3"]
    assert params["trainer.loss_type"].split(",") == ["sigmoid", "ipo"]
    assert cfg.sweep.eval is True and cfg.trainer.max_length == 192  # demo's values underneath
    assert cfg.hydra.callbacks.safetune_sweep._target_ == "safetune.train.sweep.SweepCallback"
