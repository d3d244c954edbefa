"""The notebooks run top to bottom (nbclient, python3 kernel) on small real inputs, and are committed stripped.

Parameters are injected through the environment variables the notebooks' parameter cells read. Each notebook's
last cell prints a ``NB_SUMMARY {json}`` line; the tests check it against numbers computed here independently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.eval_dirs import build_eval_dirs, flips_between

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(name: str, monkeypatch, env: dict[str, str]) -> nbformat.NotebookNode:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def summary(nb: nbformat.NotebookNode) -> dict:
    text = "".join(o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith("NB_SUMMARY "))
    return json.loads(line[len("NB_SUMMARY ") :])


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def assert_no_errors(nb: nbformat.NotebookNode) -> None:
    errs = [o for o in outputs(nb) if o.get("output_type") == "error"]
    assert not errs, [f"{e['ename']}: {e['evalue']}" for e in errs]
    stderr = "".join(o.get("text", "") for o in outputs(nb) if o.get("name") == "stderr")
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_committed_notebooks_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; strip them (Kernel > Restart & Clear Output)"


@pytest.mark.slow
def test_explore_preferences_on_the_bundled_set(monkeypatch):
    from safetune.data.stats import compute_stats
    from safetune.data.validate import validate_config
    from tests.conftest import compose

    nb = execute(
        "01_explore_preferences.ipynb", monkeypatch, {"SAFETUNE_NB_DATA": "bundled", "SAFETUNE_NB_OVERRIDES": ""}
    )
    assert_no_errors(nb)
    assert figures(nb) == 2  # coverage (category/tactic/severity) and lengths
    got = summary(nb)
    bundle, report = validate_config(compose("train", ["data=bundled"]).data)
    stats = compute_stats(bundle.train + bundle.eval)
    assert got["rows"] == stats["rows"] > 300
    assert got["category"] == stats["category"] and got["tactic"] == stats["tactic"]
    assert (got["errors"], got["warnings"]) == (len(report.errors), len(report.warnings))


@pytest.mark.slow
def test_explore_preferences_shows_validator_findings_for_a_bad_file(monkeypatch, tiny_prefs, tmp_path):
    rows = [json.loads(line) for line in tiny_prefs.read_text().splitlines()]
    rows[0]["rejected"] = rows[0]["chosen"]  # an identical pair: a validation error
    bad = tmp_path / "prefs.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    nb = execute(
        "01_explore_preferences.ipynb",
        monkeypatch,
        {
            "SAFETUNE_NB_DATA": "bundled",
            "SAFETUNE_NB_OVERRIDES": f"data.sources=[{{name: t, _target_: safetune.data.sources.triplets.load, path: {bad}}}];data.leakage_suites=[]",
        },
    )
    assert_no_errors(nb)
    got = summary(nb)
    assert got["rows"] == 8 and got["errors"] >= 1 and "identical_pair" in got["rules"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs(nb))
    assert "identical_pair" in html and "prefs.jsonl:1" in html  # the findings table names the rule and the row


@pytest.mark.slow
def test_compare_checkpoints_on_real_eval_dirs(monkeypatch):
    evals = build_eval_dirs()
    nb = execute(
        "02_compare_checkpoints.ipynb",
        monkeypatch,
        {"SAFETUNE_NB_EVALS": os.pathsep.join([str(evals / "base"), str(evals / "sweep")]), "SAFETUNE_NB_LABELS": ""},
    )
    assert_no_errors(nb)
    got = summary(nb)
    # the sweep directory expanded to its two members, after the baseline
    assert got["checkpoints"] == ["base", "pairs-chosen", "pairs-rejected"]
    assert got["tradeoff_points"] == 3
    expected = sum(flips_between(evals / "base", evals / "sweep" / m) for m in ("pairs-chosen", "pairs-rejected"))
    assert expected > 0 and got["flips"] == expected
    assert figures(nb) == 3  # harmful per category, benign per type, trade-off
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs(nb))
    assert html.count("pairs-rejected") >= expected // 2  # flipped rows are in the rendered table
