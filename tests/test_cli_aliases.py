"""Public CLIs and config keys of earlier releases keep working, each with a deprecation message."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from safetune.cli.common import rewrite_aliases
from safetune.data.mix import load_source
from safetune.eval.suites import load_suite
from tests.conftest import REPO


@pytest.mark.parametrize(
    "old,new",
    [
        ("eval.rubric.judge.model=x", "eval.rubric.model=x"),
        ("eval.rubric.scorer=llm", "eval/rubric=llm"),
        ("experiment=null", "experiment=none"),
        ("data.sources.0.loader=hh_rlhf", "data.sources.0._target_=safetune.data.sources.hh_rlhf.load"),
    ],
)
def test_deprecated_overrides_are_rewritten_with_a_warning(old, new):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        assert rewrite_aliases([old, "trainer.beta=0.1"]) == [new, "trainer.beta=0.1"]


def test_current_overrides_pass_unchanged():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rewrite_aliases(["eval.rubric.model=x", "experiment=demo"]) == ["eval.rubric.model=x", "experiment=demo"]


def test_legacy_loader_keys_still_load_with_a_warning(tiny_prefs):
    with pytest.warns(DeprecationWarning, match="_target_: safetune.data.sources.triplets.load"):
        rows = load_source({"name": "t", "loader": "triplets", "path": str(tiny_prefs)})
    assert len(rows) == 8
    with pytest.warns(DeprecationWarning, match="_target_: safetune.eval.suites.bundled.load"):
        assert len(load_suite({"name": "h", "loader": "bundled", "path": "harmful"})) == 190


@pytest.mark.parametrize(
    "old,args,expect",
    [
        ("safetune.sweep", [], "usage: python -m safetune.cli.sweep"),
        ("safetune.eval.evaluate", ["mode=bogus", "eval.retention.enabled=false"], "mode='bogus'"),
    ],
)
def test_old_module_paths_run_the_new_entry_points_with_a_deprecation_message(old, args, expect):
    out = subprocess.run([sys.executable, "-m", old, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert f"`python -m {old}` is deprecated" in text and expect in text and out.returncode != 0


def test_package_entry_points_run_the_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "safetune.train", "trainer.betaa=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "trainer.betaa" in out.stdout + out.stderr
