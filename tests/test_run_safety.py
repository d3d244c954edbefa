"""Nothing already done is lost, secrets never reach disk, and the demo runs offline from a bare clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safetune.core.errors import WorkExistsError
from safetune.core.runs import is_secret_key, redact, redact_overrides
from tests.conftest import REPO


def test_secrets_are_redacted_by_exact_key_segments():
    cfg = {"model": {"token": "secret123", "name": "x"}, "hub_token": "s2", "api_key": "s3", "OPENAI_API_KEY": "s4"}
    cfg["safety_callback"] = {"max_new_tokens": 32}
    cfg["generation"] = {"max_new_tokens": 40, "tokenizer": "t"}
    out = redact(cfg)
    assert out["model"] == {"token": "***", "name": "x"} and out["hub_token"] == out["api_key"] == "***"
    assert out["OPENAI_API_KEY"] == "***"
    assert out["safety_callback"]["max_new_tokens"] == 32 and out["generation"]["tokenizer"] == "t"
    assert not is_secret_key("num_tokens") and is_secret_key("client_secret") and is_secret_key("hfToken")
    assert redact_overrides(["+model.token=secret123", "trainer.beta=0.1"]) == ["+model.token=***", "trainer.beta=0.1"]


@pytest.mark.slow
def test_no_file_of_a_run_holds_the_secret(tmp_path, tiny_model_dir, tiny_prefs):
    from train_tiny import tiny_env, train_overrides

    env = {**tiny_env(tmp_path), "HF_TOKEN": "hf_secret_env_456"}
    run_dir = tmp_path / "run"
    over = train_overrides(
        tiny_model_dir, tiny_prefs, run_dir, "trainer.max_steps=1", "trainer.max_length=128", "+model.token=secret123"
    )
    p = subprocess.run(
        [sys.executable, "-m", "safetune.cli.train", *over],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    leaks = []
    for f in run_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if b"secret123" in data or b"hf_secret_env_456" in data:
                leaks.append(str(f.relative_to(run_dir)))
    assert leaks == [], f"the secret reached {leaks}"
    info = json.loads((run_dir / "safetune_run.json").read_text())
    assert "+model.token=***" in info["overrides"] and info["model"]["token"] == "***"
    assert "max_new_tokens: 32" in (run_dir / "config.yaml").read_text()  # not blanked by a substring match


def test_a_finished_run_dir_is_refused_unless_resume_or_overwrite(tmp_path):
    from safetune.core.runs import guard_run_dir

    guard_run_dir(tmp_path, None, False)  # empty dir: fine
    (tmp_path / "safetune_run.json").write_text("{}")
    with pytest.raises(WorkExistsError, match="finished run") as e:
        guard_run_dir(tmp_path, None, False)
    assert "overwrite=true" in e.value.hint and "resume=auto" in e.value.hint
    guard_run_dir(tmp_path, "auto", False)
    guard_run_dir(tmp_path, None, True)


def test_an_eval_dir_of_another_checkpoint_or_suite_is_refused(tmp_path):
    from safetune.eval.pipeline import guard_eval_dir

    meta = {"checkpoint": "base", "checkpoint_id": "model:x", "suites": ["bundled_harmful"]}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "summary": {"suites": {}}}))
    guard_eval_dir(tmp_path, checkpoint="base", suites=["bundled_harmful"], checkpoint_id="model:x", overwrite=False)
    for kw, what in (
        ({"checkpoint": "runs/other"}, "checkpoint"),
        ({"suites": ["xstest"]}, "suites"),
        ({"checkpoint_id": "adapter:y"}, "weights"),
    ):
        args = {"checkpoint": "base", "suites": ["bundled_harmful"], "checkpoint_id": "model:x", **kw}
        with pytest.raises(WorkExistsError, match=what):
            guard_eval_dir(tmp_path, overwrite=False, **args)
        guard_eval_dir(tmp_path, overwrite=True, **args)


def test_a_torn_cache_line_is_cut_before_appending(tmp_path):
    from safetune.eval.generate import GenerationCache

    p = tmp_path / "generations.jsonl"
    p.write_text(json.dumps({"key": "a", "response": "x"}) + "\n" + '{"key": "b", "resp')
    cache = GenerationCache(p)
    assert len(cache) == 1 and p.read_text().endswith("}\n")
    cache.add_many([{"key": "c", "response": "y"}])
    assert [json.loads(line)["key"] for line in p.read_text().splitlines()] == ["a", "c"]
    assert len(GenerationCache(p)) == 2


def test_compare_reports_a_partial_overlap_and_refuses_none(tmp_path):
    from safetune.core.errors import InputError
    from safetune.core.schema import EvalRecord
    from safetune.eval.compare import check_overlap

    rec = lambda s, i: EvalRecord(prompt_id=i, suite=s, kind="harmful", group="g", label="refusal")  # noqa: E731
    a = [rec("s", "1"), rec("s", "2"), rec("s", "3")]
    out = check_overlap([a, [rec("s", "2"), rec("s", "3"), rec("s", "9")]], ["a", "b"])
    assert out == [{"baseline": "a", "other": "b", "shared": 2, "baseline_n": 3, "other_n": 3}]
    with pytest.raises(InputError, match="share no prompts"):
        check_overlap([a, [rec("t", "1")]], ["a", "b"])


@pytest.mark.slow
def test_the_demo_runs_offline_without_shared_data(tmp_path, embedded_model_dir):
    """A bare clone on a machine with no hub and no ../shared: the demo completes on the bundled suites and says in
    one line how to add XSTest from a local file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETUNE_")}
    env.update(
        {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "TQDM_DISABLE": "1"}
    )
    env["SAFETUNE_CACHE"] = os.environ.get("SAFETUNE_CACHE", str(Path.home() / ".cache" / "safetune"))
    short = [
        "data.sources=[{name: h, _target_: safetune.data.sources.triplets.load, path: 'bundled://safety_prefs_harmful_a.jsonl', max_rows: 16}]",
        "data.validation.tactic_targets={}",
        "trainer.max_steps=2",
        "trainer.report_to=[]",
        "limit_per_group=1",
        "generation.max_new_tokens=8",
        "eval.retention.helpful_reference.max_rows=2",
    ]
    p = subprocess.run(
        [sys.executable, "-m", "safetune.cli.demo", f"demo_dir={tmp_path / 'demo'}", *short],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "xstest (walledai/XSTest) left out" in out and "SAFETUNE_XSTEST" in out
    compare_md = (tmp_path / "demo" / "compare" / "compare.md").read_text()
    assert "bundled_harmful" in compare_md and "xstest" not in compare_md
