"""Hyperparameter sweeps: Hydra multirun, optional per-job subprocesses, per-job evaluation, a summary table.

``safetune-train -m trainer.beta=0.05,0.1,0.3 trainer.loss_type=sigmoid,ipo`` runs 6 jobs; each writes its
run directory ``<hydra.sweep.dir>/<job num>`` (default ``runs/sweeps/<name>-<time>/<n>``).

``sweep.launcher``:

* ``inline`` (default): Hydra runs the jobs one after another in this process.
* ``python`` / ``accelerate``: each job is its own ``python -m safetune.train`` or ``accelerate launch
  [--config_file sweep.accelerate_config] --main_process_port <free port> -m safetune.train`` subprocess, so
  multirun and multi-process training never share ports or process groups. ``sweep.parallel`` jobs at a time.
  Do not wrap a multirun in ``accelerate launch`` yourself: every rank would run the whole sweep.

``sweep.eval=true`` runs ``python -m safetune.cli.eval checkpoint=<job dir> out_dir=<job dir>/eval`` after
each job (plus ``sweep.eval_overrides``). When the sweep ends, :class:`SweepCallback` (registered in
``conf/hydra/default.yaml``) writes ``sweep_summary.{json,md,csv}`` in the sweep directory; ``safetune-compare
<sweep dir>`` compares the jobs' evaluations. ``python -m safetune.train.sweep <sweep dir>`` rewrites the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from safetune.core import runs
from safetune.core.errors import SafetuneError

log = logging.getLogger(__name__)

LAUNCHERS = ("inline", "python", "accelerate")
_pool: ThreadPoolExecutor | None = None
_futures: list[tuple[str, Future]] = []
_lock = threading.Lock()


class SweepError(SafetuneError, RuntimeError):
    """A sweep job failed or the sweep is misconfigured."""


def _multirun_info() -> tuple[Path, list[str]] | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.runtime.output_dir), list(hc.overrides.task)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_command(
    launcher: str, overrides: list[str], run_dir: Path, accelerate_config: str | None = None, port: int | None = None
) -> list[str]:
    """The argv that trains one sweep job in its own process."""
    own = [o for o in overrides if not o.lstrip("+~").startswith(("run_dir=", "sweep.", "hydra."))]
    train = ["-m", "safetune.train", *own, f"run_dir={run_dir}", "sweep.launcher=inline"]
    if launcher == "python":
        return [sys.executable, *train]
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if accelerate_config:
            cmd += ["--config_file", str(accelerate_config)]
        cmd += ["--main_process_port", str(port or free_port())]
        return [*cmd, *train]
    raise SweepError(f"sweep.launcher={launcher!r}; expected one of {LAUNCHERS}.")


def eval_command(run_dir: Path, eval_overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "safetune.cli.eval",
        f"checkpoint={run_dir}",
        f"out_dir={run_dir / 'eval'}",
        *eval_overrides,
    ]


def _run_logged(cmd: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise SweepError(f"{' '.join(cmd[:6])} ... exited with {proc.returncode}; see {log_path}")


def run_job(cmd: list[str] | None, run_dir: Path, eval_cmd: list[str] | None) -> Path:
    """Train (when ``cmd``) then evaluate (when ``eval_cmd``) one job, each step its own subprocess."""
    if cmd is not None:
        _run_logged(cmd, run_dir / "train.log")
    if eval_cmd is not None:
        _run_logged(eval_cmd, run_dir / "eval.log")
    return run_dir


def handle_multirun_job(cfg: DictConfig) -> bool:
    """Inside ``-m`` with a subprocess launcher: queue this job as its own process and return True."""
    info = _multirun_info()
    if info is None:
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SweepError(
            "A Hydra multirun (-m) was started under `accelerate launch`/torchrun: every rank would run every job. "
            "Run `safetune-train -m ... sweep.launcher=accelerate sweep.accelerate_config=conf/accelerate/<x>.yaml` "
            "without accelerate launch; each job then gets its own `accelerate launch`."
        )
    sw = cfg.get("sweep") or {}
    launcher = sw.get("launcher", "inline")
    if launcher == "inline":
        return False
    job_dir, overrides = info
    cmd = job_command(launcher, overrides, job_dir, sw.get("accelerate_config"))
    ev = eval_command(job_dir, list(sw.get("eval_overrides") or [])) if sw.get("eval") else None
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, int(sw.get("parallel", 1))), thread_name_prefix="sweep")
        _futures.append((str(job_dir), _pool.submit(run_job, cmd, job_dir, ev)))
    log.info("Sweep job queued (%s): %s", launcher, job_dir)
    return True


def after_inline_job(cfg: DictConfig, artifacts: dict[str, Any]) -> None:
    """Inline multirun job finished training: evaluate it now if ``sweep.eval``."""
    sw = cfg.get("sweep") or {}
    if _multirun_info() is None or not sw.get("eval") or not runs.is_main_process():
        return
    run_dir = Path(artifacts["run_dir"])
    run_job(None, run_dir, eval_command(run_dir, list(sw.get("eval_overrides") or [])))


def wait_for_jobs() -> list[str]:
    """Block until queued subprocess jobs finish; return the failures' messages."""
    global _pool
    failures = []
    with _lock:
        futures = list(_futures)
        _futures.clear()
    for job_dir, fut in futures:
        try:
            fut.result()
        except Exception as e:  # noqa: BLE001 - collected and reported together
            failures.append(f"{job_dir}: {e}")
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    return failures


# ----------------------------------------------------------------------------------------------- summary


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _job_row(job_dir: Path) -> dict[str, Any] | None:
    info = runs.read_run_info(job_dir)
    metrics_path = job_dir / "metrics.json"
    if info is None or not metrics_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text())
    row: dict[str, Any] = {"job": job_dir.name, "run_dir": str(job_dir)}
    overrides = {}
    for o in info.get("overrides") or []:
        if "=" in o and not o.lstrip("+~").startswith(("run_dir=", "sweep.", "hydra.")):
            k, v = o.split("=", 1)
            overrides[k.lstrip("+~")] = v
    row["overrides"] = overrides
    tr = info.get("trainer") or {}
    row["beta"] = tr.get("beta")
    row["loss_type"] = "+".join(tr["loss_type"]) if isinstance(tr.get("loss_type"), list) else tr.get("loss_type")
    row["learning_rate"] = tr.get("learning_rate")
    row["final_loss"] = metrics.get("final/loss")
    row["reward_accuracy"] = metrics.get("final/rewards/accuracies")
    row["reward_margin"] = metrics.get("final/rewards/margins")
    results = job_dir / "eval" / "results.json"
    if results.is_file():
        res = json.loads(results.read_text())
        row["refusal_rate"] = _get(res, "summary", "overall", "harmful", "micro", "rate")
        row["over_refusal_rate"] = _get(res, "summary", "overall", "benign", "micro", "rate")
    else:
        row["refusal_rate"] = row["over_refusal_rate"] = None
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summarise_sweep(sweep_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Collect every finished job under ``sweep_dir`` into sweep_summary.{json,md,csv}."""
    sweep_dir = Path(sweep_dir)
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
    rows = [r for r in (_job_row(p) for p in job_dirs) if r is not None]
    missing = [p.name for p in job_dirs if _job_row(p) is None and (p / "config.yaml").is_file()]
    # Columns: every override that varies across jobs, then the fixed metrics.
    keys = sorted({k for r in rows for k in r["overrides"]})
    shown = {"trainer.beta", "trainer.loss_type", "trainer.learning_rate"}  # always shown as their own columns
    varying = [k for k in keys if k not in shown and len({r["overrides"].get(k) for r in rows}) > 1]
    for r in rows:
        for k in varying:
            r[k] = r["overrides"].get(k)
    cols = [
        "job",
        *varying,
        "beta",
        "loss_type",
        "learning_rate",
        "final_loss",
        "reward_accuracy",
        "reward_margin",
        "refusal_rate",
        "over_refusal_rate",
    ]
    cols = list(dict.fromkeys(cols))
    summary = {"sweep_dir": str(sweep_dir), "columns": cols, "jobs": rows, "failed_or_unfinished": missing}
    runs.write_json(sweep_dir / "sweep_summary.json", summary)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    if missing:
        lines += ["", f"Unfinished or failed jobs: {', '.join(missing)}"]
    runs.write_text(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n")
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return summary


class SweepCallback(Callback):
    """Hydra callback: at the end of a training multirun, wait for subprocess jobs and write the summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "sweep" not in config or "trainer" not in config:
            return  # not a training sweep (e.g. an eval multirun)
        failures = wait_for_jobs()
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        if sweep_dir.is_dir():
            summary = summarise_sweep(sweep_dir)
            log.info("Sweep summary (%d jobs): %s", len(summary["jobs"]), sweep_dir / "sweep_summary.md")
        if failures:
            raise SweepError("Sweep jobs failed:\n" + "\n".join(failures))
