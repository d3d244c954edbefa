"""A shortened demo on the real embedded model: the tuned model refuses more harmful prompts than the base."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_shortened_demo_improves_refusal_on_bundled_suite(tmp_path, embedded_model_dir):
    from safetune.cli.demo import run_demo

    overrides = [
        "eval/suite=bundled",  # the bundled harmful + benign suites (XSTest is covered elsewhere)
        # one short run over 72 harmful + 24 benign pairs (the demo adds many more benign look-alikes; a run this
        # short must stay mostly harmful to move refusals at all)
        "data.sources=[{name: harmful, _target_: safetune.data.sources.triplets.load, path: 'bundled://safety_prefs_harmful_*.jsonl', max_rows: 72},"
        " {name: benign, _target_: safetune.data.sources.triplets.load, path: 'bundled://safety_prefs_benign.jsonl', max_rows: 24}]",
        "trainer.max_steps=24",
        "trainer.learning_rate=2e-3",
        "trainer.report_to=[]",
        "limit_per_group=2",
        "generation.max_new_tokens=24",
        "eval.retention.enabled=false",
    ]
    metrics, artifacts = run_demo(overrides, out_root=str(tmp_path / "demo"))
    base = json.loads((tmp_path / "demo" / "eval-base" / "results.json").read_text())["summary"]
    tuned = json.loads((tmp_path / "demo" / "eval-tuned" / "results.json").read_text())["summary"]
    b = base["suites"]["bundled_harmful"]["harmful"]["micro"]
    t = tuned["suites"]["bundled_harmful"]["harmful"]["micro"]
    assert b["n"] == t["n"] == 38
    assert t["rate"] > b["rate"], f"tuned refusal {t['rate']:.2f} not above base {b['rate']:.2f}"
    assert metrics["tuned/harmful_refusal_rate"] == pytest.approx(t["rate"])
    compare_md = (tmp_path / "demo" / "compare" / "compare.md").read_text()
    header = next(line for line in compare_md.splitlines() if line.startswith("| suite"))
    assert "| base | tuned |" in header
    # peak memory after each stage (one process: non-decreasing), so users see which stage needs the memory
    rss = [metrics["eval_base_peak_rss_mb"], metrics["tuned/train_peak_rss_mb"], metrics["tuned/eval_peak_rss_mb"]]
    assert rss[0] > 100 and rss == sorted(rss)
