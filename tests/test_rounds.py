"""Iterative on-policy rounds end to end on the embedded model, shortened (``safetune-rounds rounds=2`` on the demo's
configuration: its first round is the demo).

(A tiny random model answers with empty strings, which give no pairs to learn from; the embedded SmolLM2-135M answers
almost every harmful request, so each round has harmful pairs.)

Round k synthesises with round k-1's checkpoint, trains from the base on the curated data plus every round's pairs so
far, and evaluates; the comparison puts the base and every round side by side. The per-row reference cache means
round 2 computes reference log-probs only for rows round 1 did not have.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_two_rounds_synthesise_with_the_previous_checkpoint_and_compare(tmp_path, embedded_model_dir):
    from safetune.cli.rounds import run_rounds

    overrides = [
        "experiment=demo",  # the demo's own sources: curated, look-alike supplement, three on-policy filters
        f"paths.cache={tmp_path / 'cache'}",
        "data.sources.0.max_rows=12",
        "data.sources.1.max_rows=2",
        "data.sources.2.max_rows=6",
        "data.sources.3.max_rows=3",
        "data.sources.4.max_rows=3",
        "synth.pools.0.max_rows=4",
        "synth.pools.1.max_rows=3",
        "synth.pools.2.max_rows=5",
        "synth.generation.max_new_tokens=16",
        "synth.style_refusal_tokens=8",
        "trainer.max_steps=2",
        # the separate reference pass (not the in-step one a 2-step run would choose) so the per-row cache is exercised
        "trainer.share_frozen_trunk=false",
        "trainer.per_device_train_batch_size=2",
        "trainer.report_to=[]",
        "template.preflight.sample=8",
        "eval/suite=bundled",
        "limit_per_group=1",
        "generation.max_new_tokens=8",
        "eval.retention.enabled=false",
    ]
    root = tmp_path / "rounds"
    metrics, artifacts = run_rounds(overrides, str(root), rounds=2)

    # each round synthesised with the previous round's policy: the base, then round 1's checkpoint
    m1 = json.loads((root / "round-1" / "synth" / "synth_manifest.json").read_text())
    m2 = json.loads((root / "round-2" / "synth" / "synth_manifest.json").read_text())
    assert (m1["provenance"]["round"], m1["provenance"]["policy"]) == (1, "base")
    assert m2["provenance"]["round"] == 2
    assert m2["provenance"]["checkpoint_id"] != m1["provenance"]["checkpoint_id"]
    assert "adapter" in m2["provenance"]["checkpoint_id"]
    assert metrics["round-1/synth/pairs"] > 0 and metrics["round-2/synth/pairs"] > 0
    # round 2 met prompts round 1 had not (the next seeded part of each sampled pool)
    seen = [
        {json.loads(line)["prompt_id"] for line in (root / r / "synth" / "verdicts.jsonl").read_text().splitlines()}
        for r in ("round-1", "round-2")
    ]
    assert len(seen[0]) == len(seen[1]) == 12 and not seen[0] & seen[1]

    # round 2 trains on the curated data plus both rounds' pairs
    pools = {
        json.loads(line)["source"]
        for line in (root / "round-2" / "run" / "data" / "train.jsonl").read_text().splitlines()
        if line.strip()
    }
    assert any(":r1:" in p for p in pools) and any(":r2:" in p for p in pools), pools

    # the reference pass of round 2 reads round 1's rows from the per-row cache and computes only the new ones
    r1 = json.loads((root / "round-1" / "run" / "metrics.json").read_text())
    r2 = json.loads((root / "round-2" / "run" / "metrics.json").read_text())
    assert r1["ref_cache/rows_reused"] == 0
    assert r2["ref_cache/rows_reused"] > 0 and r2["ref_cache/rows_computed"] > 0

    # both rounds evaluated and compared with the base; memory per stage reported
    for name in ("round-1", "round-2"):
        assert (root / name / "eval" / "results.json").is_file()
        assert metrics[f"{name}/eval_peak_rss_mb"] >= metrics["eval_base_peak_rss_mb"] > 0
    header = next(line for line in (root / "compare" / "compare.md").read_text().splitlines() if "| suite" in line)
    assert "| base |" in header and "| round-1 |" in header and "| round-2 |" in header
