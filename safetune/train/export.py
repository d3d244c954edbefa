"""``safetune-export run_dir=<run>``: merge the LoRA adapter into the base model and save a standalone model.

Writes ``<out_dir>`` (default ``<run_dir>/merged``) atomically: safetensors weights, tokenizer (with the chat
template used in training), and a model card (README.md) recording the training config, the data manifest
and the latest evaluation table. ``push_to_hub=true hub_repo_id=<org/name>`` uploads it when a token is
configured (``hub_token`` or ``$HF_TOKEN``); nothing is ever uploaded otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safetune.core import runs
from safetune.core.errors import SafetuneError
from safetune.core.modeling import ModelSpec, load_adapter, load_model, load_tokenizer, resolve_model_path
from safetune.eval.render.markdown import markdown_table

log = logging.getLogger(__name__)


class ExportError(SafetuneError, RuntimeError):
    """The run directory cannot be exported; the message says what is missing."""

    hint = "export a finished run: run_dir=<the directory safetune-train printed at its end>"


def latest_eval(run_dir: Path, eval_dir: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The given eval dir, else the newest results.json under the run dir."""
    if eval_dir:
        p = Path(eval_dir) / "results.json"
        if not p.is_file():
            raise ExportError(f"eval_dir={eval_dir!r} has no results.json; run safetune-eval into it first.")
        return p.parent, json.loads(p.read_text())
    found = sorted(run_dir.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return (found[-1].parent, json.loads(found[-1].read_text())) if found else None


def model_card(run_dir: Path, info: dict[str, Any], base: str, evaluation: tuple[Path, dict[str, Any]] | None) -> str:
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else "(missing)"
    manifest = (run_dir / "data_manifest.json").read_text() if (run_dir / "data_manifest.json").is_file() else "{}"
    metrics = (run_dir / "metrics.json").read_text() if (run_dir / "metrics.json").is_file() else "{}"
    parts = [
        "---",
        "library_name: transformers",
        "tags: [safetune, dpo, safety]",
        f"base_model: {base}",
        "---",
        "",
        f"# {info.get('name', run_dir.name)} (safetune DPO safety fine-tune)",
        "",
        f"Base model: `{base}`. {'LoRA adapter merged into the base weights' if info.get('kind') == 'adapter' else 'Full fine-tune'}"
        f" by `safetune-export` from run `{run_dir.name}`.",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation is not None:
        eval_path, res = evaluation
        parts += [
            f"From `{eval_path.name}` ({res.get('meta', {}).get('judge', 'judge')} judge):",
            "",
            markdown_table(res["summary"]),
            "",
        ]
    else:
        parts += ["No evaluation found in the run directory (run `safetune-eval checkpoint=<run_dir>`).", ""]
    parts += [
        "## Training metrics",
        "",
        "```json",
        metrics.strip(),
        "```",
        "",
        "## Data manifest",
        "",
        "```json",
        manifest.strip(),
        "```",
        "",
        "## Training config (secrets redacted)",
        "",
        "```yaml",
        config.strip(),
        "```",
        "",
    ]
    return "\n".join(parts)


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: str | None = None,
    eval_dir: str | None = None,
) -> Path:
    """Merge and save; returns the output directory."""
    run_dir = Path(run_dir)
    info = runs.read_run_info(run_dir)
    if info is None:
        what = f"has no {runs.RUN_INFO}" if run_dir.is_dir() else "does not exist"
        raise ExportError(
            f"run_dir={run_dir} {what}; expected a run directory written by safetune-train (with {runs.RUN_INFO}).",
            hint="pass run_dir=<the directory safetune-train printed at its end> (runs/<name>-<time> by default)",
        )
    weights_dir = run_dir / info.get("adapter", "adapter")
    out = Path(out_dir) if out_dir else run_dir / "merged"
    spec = ModelSpec.from_cfg(info["model"])
    spec.load_in_4bit = False  # merging needs full-precision base weights (QLoRA adapters merge into them too)
    if dtype:
        spec.dtype = dtype
    if info.get("kind") == "adapter":
        base_path = resolve_model_path(spec)
        model = load_adapter(load_model(spec, base_path), weights_dir).merge_and_unload()
        base = spec.name_or_path
    else:
        spec.name_or_path = str(weights_dir)
        model = load_model(spec, str(weights_dir))
        base = info["model"].get("name_or_path", "?")
    tokenizer = load_tokenizer(spec, str(weights_dir))  # the training tokenizer, chat template included
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(run_dir, info, base, latest_eval(run_dir, eval_dir)))
    for name in ("config.yaml", "data_manifest.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / f"safetune_{name}")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("Merged model written to %s", out)
    return out


def push_to_hub(folder: Path, repo_id: str, token: str | None, private: bool = True) -> str:
    """Upload ``folder``; refuses without a token (never attempted implicitly)."""
    if not repo_id:
        raise ExportError("push_to_hub=true needs hub_repo_id=<org/name>.")
    if not token:
        raise ExportError("push_to_hub=true needs a token: set hub_token=... or the HF_TOKEN environment variable.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="safetune-export")
    return f"https://huggingface.co/{repo_id}"


def run_export(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    out = export_run(cfg.run_dir, cfg.get("out_dir"), dtype=cfg.get("dtype"), eval_dir=cfg.get("eval_dir"))
    artifacts: dict[str, Any] = {"merged_dir": str(out)}
    if cfg.get("push_to_hub"):
        artifacts["hub_url"] = push_to_hub(
            out, cfg.get("hub_repo_id"), cfg.get("hub_token"), bool(cfg.get("private", True))
        )
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {"safetensors_bytes": size}, artifacts
