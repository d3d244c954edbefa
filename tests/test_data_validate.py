"""Validation rules, mixing/dedup/split/leakage, stats and the safetune-data CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safetune.cli import data as cli
from safetune.core.schema import PreferenceExample
from safetune.data.io import bundled_dir
from safetune.data.mix import DataBundle, DataLeakageError, build_preference_data, dedup, split_by_prompt
from safetune.data.stats import compute_stats, percentiles
from safetune.data.validate import (
    InvalidDataError,
    enforce_valid,
    is_refusal,
    validate_config,
    validate_examples,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

REFUSAL_OK = "I can't help with that, but I can explain how to report it safely. Want me to?"
COMPLY = "Sure, here is exactly how you do it, step by step."


def ex(i: int = 0, prompt: str = "How do I make a weapon?", chosen: str = REFUSAL_OK, rejected: str = COMPLY, **kw):
    kw.setdefault("categories", ["Violence"])
    kw.setdefault("tactic", "direct")
    return PreferenceExample(
        id=f"r{i}", prompt=[{"role": "user", "content": prompt}], chosen=chosen, rejected=rejected, **kw
    )


def rules(report, level: str | None = None) -> set[str]:
    return {i.rule for i in report.issues if level is None or i.level == level}


# ---------------------------------------------------------------- per-row rules


def test_clean_row_has_no_row_issues():
    r = validate_examples([ex()], {"validation": {"tactic_targets": {}, "min_per_category": 0}})
    assert r.ok and not r.issues


@pytest.mark.parametrize(
    "kwargs, rule, level",
    [
        ({"rejected": REFUSAL_OK}, "identical_pair", "error"),
        ({"rejected": REFUSAL_OK.upper() + "  "}, "identical_pair", "error"),
        ({"chosen": "   "}, "empty_field", "error"),
        ({"chosen": "Sure thing â€™ok, here it is, all of it."}, "encoding", "error"),
        ({"rejected": "I won't do that. That request is not OK with me."}, "rejected_is_refusal", "warning"),
        ({"chosen": "I can't help with that. How dare you ask me such a thing?"}, "lecturing_refusal", "warning"),
        ({"chosen": "I can't help with that. It is illegal."}, "refusal_without_alternative", "warning"),
        ({"rejected": "No."}, "too_short", "warning"),
        ({"categories": ["Space Piracy"]}, "bad_label", "error"),
    ],
    ids=[
        "identical",
        "identical_normalised",
        "empty",
        "mojibake",
        "rejected_refusal",
        "lecture",
        "no_alt",
        "short",
        "label",
    ],
)
def test_row_rules(kwargs, rule, level):
    r = validate_examples([ex(**kwargs)], {"validation": {"tactic_targets": {}, "min_per_category": 0}})
    hits = [i for i in r.issues if i.rule == rule]
    assert hits and hits[0].level == level
    assert hits[0].where == "id=r0"


def test_rejected_refusal_on_benign_row_is_expected_not_flagged():
    benign = ex(
        prompt="How do I kill a Python process?",
        chosen="Run `kill <pid>` or use Task Manager on Windows.",
        rejected="I'm sorry, but I can't help with killing anything.",
        categories=[],
        tactic="edge_case",
    )
    r = validate_examples([benign], {"validation": {"tactic_targets": {}}})
    assert "rejected_is_refusal" not in rules(r)
    over = ex(
        chosen="I can't help with killing anything, sorry about that.",
        rejected="Run kill -9 on the pid.",
        categories=[],
        tactic="edge_case",
    )
    assert "benign_chosen_refusal" in rules(validate_examples([over], {"validation": {"tactic_targets": {}}}))


def test_wrong_roles_and_empty_turns_are_errors():
    bad = ex()
    bad.prompt = [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": " "}]
    r = validate_examples([bad])
    assert {"role_order", "empty_turn"} <= rules(r, "error")
    bad.prompt = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert "role_order" in rules(validate_examples([bad]), "error")


def test_refusal_detector_examples():
    assert is_refusal("I won't help move classified files off a secure network.")
    assert is_refusal("That's something I'll pass on. Selling state secrets puts lives at risk.")
    assert not is_refusal("Uncle Bill here, and I won't sugarcoat any of it: first, the classroom...")
    assert not is_refusal("Mount your phone on a small tripod and start the time-lapse mode.")


# ---------------------------------------------------------------- dataset rules


def test_duplicates_swapped_duplicates_and_duplicate_ids():
    a, b = ex(1), ex(2, chosen=COMPLY, rejected=REFUSAL_OK)  # b swaps a: contradictory labels
    c = ex(3, chosen=REFUSAL_OK + " ")  # normalised duplicate of a
    d = ex(1, prompt="Something else entirely?")  # reuses a's id
    r = validate_examples([a, b, c, d])
    by_rule = {i.rule: i for i in r.issues}
    assert by_rule["swapped_duplicate"].level == "error"
    assert (by_rule["swapped_duplicate"].where, by_rule["swapped_duplicate"].message) == (
        "id=r2",
        "the same pair appears at id=r1 with chosen and rejected exchanged.",
    )
    assert by_rule["duplicate"].level == "warning" and by_rule["duplicate"].where == "id=r3"
    assert by_rule["duplicate_id"].level == "error" and "id 'r1' already used" in by_rule["duplicate_id"].message


def test_length_bias_and_tactic_coverage_warnings():
    rows = [ex(i, prompt=f"q{i}", chosen="A much longer chosen reply, I can explain instead. " * 3) for i in range(10)]
    r = validate_examples(rows)
    assert "length_bias" in rules(r, "warning")
    cov = [i for i in r.issues if i.rule == "tactic_coverage"]
    assert any("direct is 100%" in i.message for i in cov)  # all rows direct: far above 25-35%
    assert any(i.message.startswith("edge_case is 0%") for i in cov)
    ok = validate_examples(rows, {"validation": {"tactic_targets": {"direct": [0.9, 1.0]}, "length_bias": 1.0}})
    assert not ({"tactic_coverage", "length_bias"} & rules(ok))


# ---------------------------------------------------------------- mixing, dedup, split, leakage


def test_dedup_exact_and_normalised():
    rows = [ex(1), ex(2), ex(3, prompt="HOW do I make a weapon??")]
    kept, dropped = dedup(rows)
    assert [e.id for e in kept] == ["r1"] and dropped == {"exact": 1, "normalised": 1}


def test_split_by_prompt_keeps_prompt_groups_together():
    rows = [ex(i, prompt=f"prompt {i % 7}", chosen=f"{REFUSAL_OK} {i}") for i in range(40)]
    train, ev = split_by_prompt(rows, 0.3, seed=3)
    assert ev and len(train) + len(ev) == 40
    assert not {e.user_text for e in train} & {e.user_text for e in ev}
    assert split_by_prompt(rows, 0.3, seed=3) == (train, ev)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_mixing_weights_max_rows_deterministic(tmp_path):
    a = _write(
        tmp_path / "a.jsonl",
        [{"prompt": f"a{i}", "chosen": REFUSAL_OK, "rejected": f"{COMPLY} {i}"} for i in range(10)],
    )
    b = _write(
        tmp_path / "b.jsonl",
        [{"prompt": f"b{i}", "chosen": REFUSAL_OK, "rejected": f"{COMPLY} {i}"} for i in range(10)],
    )
    cfg = {"sources": [{"name": "a", "path": a, "weight": 0.5}, {"name": "b", "path": b, "max_rows": 3}], "seed": 5}
    bundle = build_preference_data(cfg)
    assert [s["used"] for s in bundle.manifest["sources"]] == [5, 3]
    assert len(bundle.train) == 8
    assert [e.id for e in build_preference_data(cfg).train] == [e.id for e in bundle.train]
    other = build_preference_data({**cfg, "seed": 6})
    assert sorted(e.user_text for e in other.train) != sorted(e.user_text for e in bundle.train)
    doubled = build_preference_data({"sources": [{"path": a, "weight": 2.0}], "dedup": False})
    assert len(doubled.train) == 20


def test_leakage_check_fails_on_eval_suite_prompt(tmp_path):
    suite = _write(tmp_path / "suite.jsonl", [{"prompt": [{"role": "user", "content": "How do I Stop a  process?"}]}])
    data = _write(
        tmp_path / "d.jsonl", [{"prompt": "how do i stop a process", "chosen": "Use kill.", "rejected": "No way."}]
    )
    cfg = {"sources": [{"path": data}], "leakage_suites": [suite]}
    with pytest.raises(DataLeakageError, match=r"d\.jsonl:1.*suite\.jsonl:1"):
        build_preference_data(cfg)
    assert len(build_preference_data({**cfg, "on_leakage": "warn"}).train) == 1
    _, report = validate_config(cfg)
    assert [i.rule for i in report.errors] == ["leakage"]


def test_bundled_suites_readable_for_leakage():
    from safetune.data.mix import load_suite_prompts

    assert len(load_suite_prompts("suite://harmful")) > 50 and len(load_suite_prompts("suite://benign")) > 50


# ---------------------------------------------------------------- bundled data and the training gate


def test_bundled_set_validates_with_zero_errors():
    if not list(bundled_dir().glob("safety_prefs_*.jsonl")):
        pytest.skip("no bundled safety_prefs_*.jsonl files")
    cfg = {
        "sources": [{"name": "bundled", "path": "bundled://safety_prefs"}],
        "leakage_suites": ["suite://harmful", "suite://benign"],
    }
    bundle, report = validate_config(cfg)
    assert report.errors == [], [str(i) for i in report.errors[:5]]
    assert report.rows == len(bundle.train) > 100


def test_bundled_set_coverage_from_the_data():
    """Issue #7: >= 300 triplets, every harm category, the validator's default tactic mix, >= 25% benign
    look-alike pairs (helpful chosen, refusing rejected) — computed from the files, not hard-coded."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from safetune import CONF_DIR
    from safetune.core.schema import HARM_CATEGORIES
    from safetune.data.validate import is_refusal

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train").data, resolve=True)  # data=bundled is the default
    bundle, report = validate_config(cfg)
    rows = bundle.train
    assert report.errors == [] and len(rows) >= 300
    coverage = [str(i) for i in report.warnings if i.rule in ("tactic_coverage", "category_coverage")]
    assert coverage == []  # tactic mix inside the default targets, every category present
    harmful = [r for r in rows if r.categories]
    assert {c for r in harmful for c in r.categories} == set(HARM_CATEGORIES)
    assert not any(is_refusal(r.rejected) for r in harmful)
    # chosen refuses, except where declining is implicit (an injected instruction ignored, the real task done)
    assert sum(is_refusal(r.chosen) for r in harmful) / len(harmful) >= 0.95
    benign = [r for r in rows if not r.categories]
    assert not any(is_refusal(r.chosen) for r in benign)  # benign pairs: chosen helps ...
    assert sum(is_refusal(r.rejected) for r in benign) / len(benign) >= 0.9  # ... rejected refuses (heuristic cues)
    assert len(benign) / len(rows) >= 0.25


def test_lookalike_supplement_is_clean_benign_and_leak_free():
    """The demo's over-refusal supplement: every pair is a safe prompt with a helpful chosen and a refusing
    rejected, validated with zero errors and no evaluation-suite prompt."""
    from safetune.data.validate import is_refusal

    cfg = {
        "sources": [{"name": "lookalikes", "path": "bundled://lookalike_prefs.jsonl"}],
        "leakage_suites": ["suite://harmful", "suite://benign", "suite://helpful_reference"],
        "validation": {"tactic_targets": {}},
    }
    bundle, report = validate_config(cfg)
    assert report.errors == [] and len(bundle.train) >= 100
    assert all(not r.categories and r.tactic == "edge_case" for r in bundle.train)
    assert not any(is_refusal(r.chosen) for r in bundle.train)
    assert sum(is_refusal(r.rejected) for r in bundle.train) / len(bundle.train) >= 0.9


def test_subtle_harm_supplement_is_clean_harmful_and_leak_free():
    """The demo's subtle-harm supplement: every pair is a categorised harmful request with a refusing chosen and a
    complying rejected (in the tiny model's own "I can help you..." style), zero errors, no evaluation prompt."""
    from safetune.data.validate import is_refusal

    cfg = {
        "sources": [{"name": "subtle_harm", "path": "bundled://subtle_harm_prefs.jsonl"}],
        "leakage_suites": ["suite://harmful", "suite://benign"],
        "validation": {"tactic_targets": {}},
    }
    bundle, report = validate_config(cfg)
    rows = bundle.train
    assert report.errors == [] and len(rows) >= 50
    assert all(r.categories and r.tactic != "edge_case" for r in rows)
    assert not any(is_refusal(r.rejected) for r in rows)
    assert sum(is_refusal(r.chosen) for r in rows) / len(rows) >= 0.95
    model_style = ("I can ", "I'm happy to help", "I'm glad to help", "Happy to help", "I'd be glad")
    assert sum(r.rejected.startswith(model_style) for r in rows) / len(rows) >= 0.5


def test_enforce_valid_blocks_training_unless_allowed():
    bundle = DataBundle(train=[ex(1, rejected=REFUSAL_OK)])
    with pytest.raises(InvalidDataError, match=r"id=r1: field 'chosen' \[identical_pair\].*(?s:.*)allow_invalid"):
        enforce_valid(bundle, {})
    report = enforce_valid(bundle, {"allow_invalid": True})
    assert bundle.manifest["validation"]["errors"] == len(report.errors) == 1


# ---------------------------------------------------------------- stats and CLI


def test_stats_counts_and_percentiles():
    rows = [ex(1), ex(2, prompt="x", categories=[], severity=0, tactic="edge_case")]
    s = compute_stats(rows)
    assert s["category"] == {"Violence": 1} and s["tactic"] == {"direct": 1, "edge_case": 1}
    assert s["severity"] == {"0": 1, "unknown": 1}
    assert percentiles([1, 2, 3, 4]) == {"p5": 1, "p25": 1, "p50": 2, "p75": 3, "p95": 4, "p100": 4}


def test_cli_validate_file_exit_codes_and_json(tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", [{"prompt": "hello there", "chosen": REFUSAL_OK, "rejected": COMPLY}])
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "hello there", "chosen": COMPLY, "rejected": COMPLY}])
    assert cli.main(["validate", good, "--no-leakage"]) == 0
    out_json = tmp_path / "r.json"
    assert cli.main(["validate", bad, "--no-leakage", "--json", str(out_json)]) == 1
    report = json.loads(out_json.read_text())
    assert report["errors"] == 1 and report["issues"][0]["where"] == "bad.jsonl:1"
    assert "[identical_pair]" in capsys.readouterr().out


def test_cli_validate_reports_invalid_rows_and_malformed_json(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"prompt": "a", "chosen": "b b b b b b b b b b"}\n{"prompt": "c", "chosen": "d", "rejected": "e"}\n'
    )
    assert cli.main(["validate", str(rows), "--no-leakage"]) == 1
    assert "rows.jsonl:1: [invalid_row] missing field 'rejected'" in capsys.readouterr().out
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a",\n')
    assert cli.main(["validate", str(broken)]) == 1
    assert "broken.jsonl:1: [malformed_json] malformed JSON" in capsys.readouterr().out


def test_cli_hydra_data_group_and_stats(capsys):
    if not list(bundled_dir().glob("safety_prefs_*.jsonl")):
        pytest.skip("no bundled safety_prefs_*.jsonl files")
    assert cli.main(["validate", "data=bundled"]) == 0
    assert cli.main(["stats", "data=bundled"]) == 0
    out = capsys.readouterr().out
    assert "tactic" in out and "p95" in out and "Human Trafficking" in out


def test_cli_pku_real_file_with_loader_option(capsys):
    path = SHARED / "pku-saferlhf" / "alpaca-7b-test-sample.jsonl"
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent")
    assert cli.main(["stats", str(path), "--loader", "pku_saferlhf"]) == 0
    assert "Cybercrime" in capsys.readouterr().out


def test_cli_preflight_dispatch_reports_a_bad_data_argument(capsys):
    # `safetune-data preflight` is dispatched to the preflight CLI, which names what --data accepts
    assert cli.main(["preflight", "--data", "no-such-config"]) == 2
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "no-such-config" in out and "bundled" in out
