"""Weights repeat rows on purpose: deduplication runs per source (against earlier sources) before weighting."""

from __future__ import annotations

import json

from safetune.data.mix import build_preference_data


def _write(path, prompts):
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(
                json.dumps(
                    {
                        "id": f"{path.stem}-{i}",
                        "prompt": p,
                        "chosen": f"A helpful answer about {p}.",
                        "rejected": "I'm sorry, I can't help with anything like that.",
                    }
                )
                + "\n"
            )


def test_weight_two_doubles_rows_and_dedup_still_drops_true_duplicates(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, ["How do I sharpen a knife?", "How do I cut a mango?", "How do I cut a mango?"])  # one in-source dup
    _write(b, ["How do I sharpen a knife?", "How do I fold a fitted sheet?"])  # one dup of source a
    cfg = {
        "sources": [
            {"name": "a", "_target_": "safetune.data.sources.triplets.load", "path": str(a)},
            {"name": "b", "_target_": "safetune.data.sources.triplets.load", "path": str(b), "weight": 2.0},
        ],
        "seed": 1,
        "dedup": True,
    }
    bundle = build_preference_data(cfg)
    prompts = sorted(ex.user_text for ex in bundle.train)
    assert prompts == [
        "How do I cut a mango?",
        "How do I fold a fitted sheet?",
        "How do I fold a fitted sheet?",
        "How do I sharpen a knife?",
    ]
    assert [s["used"] for s in bundle.manifest["sources"]] == [2, 2]
    ids = [ex.id for ex in bundle.train]
    assert len(set(ids)) == len(ids) and sum(i.endswith("~2") for i in ids) == 1  # the repeat has its own id


def test_bundled_exact_file_name_and_prefix_both_resolve():
    from safetune.data.io import bundled_dir, resolve_local

    assert [p.name for p in resolve_local("bundled://safety_prefs_benign.jsonl")] == ["safety_prefs_benign.jsonl"]
    names = [p.name for p in resolve_local("bundled://safety_prefs")]
    assert "safety_prefs_benign.jsonl" in names and "lookalike_prefs.jsonl" not in names
    assert names == sorted(p.name for p in bundled_dir().glob("safety_prefs*.jsonl"))
