"""End to end on the real embedded model: train a few steps, evaluate base and tuned, compare."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose


@pytest.mark.slow
def test_train_eval_compare_on_embedded_model(tmp_path, embedded_model_dir, capsys):
    from safetune.eval.compare import run_compare
    from safetune.eval.pipeline import run_eval
    from safetune.train.recipe import run_train

    run_dir = tmp_path / "run"
    tcfg = compose(
        "train",
        [
            "experiment=demo",
            # the demo's curated source only (its on-policy sources need a synthesis run: tests/test_rounds.py)
            "data.sources=[{name: bundled, _target_: safetune.data.sources.triplets.load,"
            " path: 'bundled://safety_prefs', max_rows: 8}]",
            "trainer.max_steps=2",
            "trainer.report_to=[]",
            f"run_dir={run_dir}",
        ],
    )
    train_metrics, art = run_train(tcfg)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    evals = {}
    for name, ckpt in (("base", "base"), ("tuned", str(run_dir))):
        ecfg = compose(
            "eval",
            ["limit_per_group=1", "generation.max_new_tokens=12", f"checkpoint={ckpt}", f"out_dir={tmp_path / name}"],
        )
        metrics, eart = run_eval(ecfg)
        evals[name] = tmp_path / name
        report = (tmp_path / name / "report.md").read_text()
        # one row per harm category and per benign type, with counts and intervals
        assert report.count("| 0 | 1 |") + report.count("| 1 | 1 |") == 19 + 10
        assert "Animal Abuse" in report and "homonyms" in report
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["summary"]["suites"]["bundled_harmful"]["harmful"]["micro"]["n"] == 19
        assert metrics["n_generated"] == 29

    ccfg = compose(
        "compare", [f"evals=[{evals['base']},{evals['tuned']}]", "labels=[base,tuned]", f"out_dir={tmp_path / 'cmp'}"]
    )
    _, cart = run_compare(ccfg)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| suite"))
    assert "| base |" in header and "| tuned |" in header and "Δ tuned" in header
    assert md.count("Animal Abuse") >= 1 and "McNemar" in md
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["names"] == ["base", "tuned"]
