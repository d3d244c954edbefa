"""Bad input through the real CLIs (subprocesses): each case exits non-zero with ``error:`` (or the validator's
report), prints no traceback, and names the file/line, field or config key. Nothing already done is lost."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
GOOD_ROW = {
    "prompt": "How do I get into my neighbour's wifi without asking?",
    "chosen": "I can't help with getting into someone else's network. I can help you secure your own instead.",
    "rejected": "Sure, first scan for networks nearby and then try the usual default passwords until one works.",
    "categories": ["Cybercrime"],
    "tactic": "direct",
}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 240):
    """(exit code, stdout+stderr, seconds) of a safetune command run as a user would."""
    cmd = {"train": "safetune.cli.train", "eval": "safetune.cli.eval", "compare": "safetune.cli.compare"}
    cmd.update({"export": "safetune.cli.export", "data": "safetune.cli.data", "demo": "safetune.cli.demo"})
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v != "" and k != "SAFETUNE_DEBUG"}  # "": unset it
    t = time.time()
    p = subprocess.run(
        [sys.executable, "-m", cmd[args[0]], *args[1:]],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout + p.stderr, time.time() - t


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def eval_dir(path: Path, checkpoint: str, suite: str, prompts: list[str]) -> str:
    """A finished-looking evaluation directory (results.json + verdicts.jsonl) without running a model."""
    path.mkdir(parents=True)
    meta = {"label": path.name, "checkpoint": checkpoint, "checkpoint_id": f"model:{checkpoint}", "suites": [suite]}
    summary = {"suites": {suite: {}}, "overall": {}}
    (path / "results.json").write_text(json.dumps({"meta": meta, "summary": summary}))
    rows = [{"prompt_id": p, "suite": suite, "kind": "harmful", "group": "g", "label": "refusal"} for p in prompts]
    jsonl(path / "verdicts.jsonl", rows)
    return str(path)


def setup(tmp: Path) -> dict[str, str]:
    """Files the cases refer to (written fresh for every case)."""
    f = {}
    f["empty"] = str(tmp / "empty.jsonl")
    Path(f["empty"]).write_text("")
    f["blank"] = str(tmp / "blank.jsonl")
    Path(f["blank"]).write_text("\n\n  \n")
    f["mixed"] = jsonl(tmp / "mixed.jsonl", [GOOD_ROW, "{not json", {**GOOD_ROW, "rejected": GOOD_ROW["chosen"]}])
    f["notgz"] = str(tmp / "data.jsonl.gz")
    Path(f["notgz"]).write_text(json.dumps(GOOD_ROW) + "\n")
    f["latin1"] = str(tmp / "rows.csv")
    Path(f["latin1"]).write_bytes("prompt,chosen,rejected\ncaf\xe9 question?,a,b\n".encode("latin-1"))
    f["badcat"] = jsonl(
        tmp / "badcat.jsonl", [GOOD_ROW, {**GOOD_ROW, "prompt": "x y z", "categories": ["Space Piracy"]}]
    )
    f["badsev"] = jsonl(tmp / "badsev.jsonl", [{**GOOD_ROW, "severity": 9}])
    f["roles"] = jsonl(tmp / "roles.jsonl", [{**GOOD_ROW, "prompt": [{"role": "assistant", "content": "hi"}]}])
    hh = tmp / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as g:
        g.write(json.dumps({"chosen": "no turns here", "rejected": "none here either"}) + "\n")
    f["hh"] = str(hh)
    f["good"] = jsonl(tmp / "good.jsonl", [GOOD_ROW])
    f["badsuite"] = jsonl(tmp / "suite.jsonl", [{"prompt": "hello there", "category": "Not A Category"}])
    run = tmp / "finished-run"
    run.mkdir()
    (run / "safetune_run.json").write_text(json.dumps({"kind": "adapter", "model": {}, "adapter": "adapter"}))
    f["finished_run"] = str(run)
    f["eval_a"] = eval_dir(tmp / "eval-a", "base", "bundled_harmful", ["p1", "p2"])
    f["eval_b"] = eval_dir(tmp / "eval-b", "runs/x", "xstest", ["q1", "q2"])
    trunc = tmp / "eval-trunc"
    eval_dir(trunc, "base", "bundled_harmful", ["p1"])
    (trunc / "results.json").write_text('{"meta": {"label": "x"}, "summ')
    f["eval_trunc"] = str(trunc)
    broken = tmp / "broken-run"
    (broken / "adapter").mkdir(parents=True)
    (broken / "safetune_run.json").write_text(json.dumps({"kind": "adapter", "model": {}, "adapter": "adapter"}))
    (broken / "adapter" / "adapter_config.json").write_text("{}")
    (broken / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00\x01truncated")
    f["broken_run"] = str(broken)
    return f


# (id, command args with {file} placeholders, extra env, expected exit, texts the output must contain)
CASES = [
    ("validate-empty-file", ["data", "validate", "{empty}"], {}, 1, ["empty.jsonl", "no usable rows"]),
    ("validate-blank-lines", ["data", "validate", "{blank}"], {}, 1, ["blank.jsonl", "no usable rows"]),
    (
        "validate-one-pass",
        ["data", "validate", "{mixed}", "--no-leakage"],
        {},
        1,
        ["mixed.jsonl:2", "malformed_json", "mixed.jsonl:3", "identical_pair"],
    ),
    ("validate-not-gzip", ["data", "validate", "{notgz}"], {}, 2, ["data.jsonl.gz", "not a gzip file"]),
    ("validate-latin1-csv", ["data", "validate", "{latin1}"], {}, 2, ["rows.csv:2", "UTF-8"]),
    ("validate-missing-file", ["data", "validate", "{tmp}/nope.jsonl"], {}, 2, ["nope.jsonl", "does not exist"]),
    (
        "validate-hh-nothing-parses",
        ["data", "validate", "{hh}", "--loader", "hh_rlhf"],
        {},
        1,
        ["hh.jsonl.gz", "no usable rows"],
    ),
    (
        "validate-bad-category",
        ["data", "validate", "{badcat}", "--no-leakage"],
        {},
        1,
        ["badcat.jsonl:2", "Space Piracy"],
    ),
    ("validate-bad-severity", ["data", "validate", "{badsev}", "--no-leakage"], {}, 1, ["badsev.jsonl:1", "severity"]),
    ("validate-role-order", ["data", "validate", "{roles}", "--no-leakage"], {}, 1, ["roles.jsonl:1", "user turn"]),
    ("stats-missing-file", ["data", "stats", "{tmp}/nope.jsonl"], {}, 2, ["nope.jsonl", "does not exist"]),
    ("preflight-missing-data", ["data", "preflight", "--data", "{tmp}/nope.jsonl"], {}, 2, ["nope.jsonl"]),
    ("train-beta-not-a-number", ["train", "trainer.beta=abc"], {}, 2, ["trainer.beta", "expected a number"]),
    ("train-negative-lr", ["train", "trainer.learning_rate=-1"], {}, 2, ["trainer.learning_rate", "> 0"]),
    (
        "train-zero-batch",
        ["train", "trainer.per_device_train_batch_size=0"],
        {},
        2,
        ["trainer.per_device_train_batch_size", ">= 1"],
    ),
    ("train-key-typo", ["train", "trainer.betaa=0.1"], {}, 2, ["trainer.betaa", "trainer.beta"]),
    ("train-data-path-guess", ["train", "data.path=x.jsonl"], {}, 2, ["data.path", "data.sources.0.path"]),
    (
        "train-missing-local-data",
        ["train", "data=triplets", "data.sources.0.path=in/nonexistent.jsonl"],
        OFFLINE,
        2,
        ["data.sources.0", "in/nonexistent.jsonl", "does not exist"],
    ),
    ("train-dropped-trl-field", ["train", "+trainer.max_prompt_length=128"], {}, 2, ["max_prompt_length"]),
    ("train-unknown-loss", ["train", "trainer.loss_type=[nope]"], {}, 2, ["trainer.loss_type", "nope"]),
    (
        "train-loss-weights-mismatch",
        ["train", "trainer.loss_weights=[1.0]"],
        {},
        2,
        ["trainer.loss_weights", "loss_type"],
    ),
    ("train-model-missing-value", ["train", "model=hub"], {}, 2, ["model.name_or_path", "???"]),
    (
        "train-model-missing-dir",
        ["train", "model.name_or_path=/nonexistent/model"],
        {},
        2,
        ["model.name_or_path", "/nonexistent/model"],
    ),
    (
        "train-model-hub-offline",
        ["train", "model.name_or_path=some-org/some-model"],
        OFFLINE,
        2,
        ["some-org/some-model", "hub"],
    ),
    ("train-finished-run", ["train", "run_dir={finished_run}"], {}, 2, ["finished-run", "overwrite=true"]),
    (
        "train-target-typo",
        ["train", "data.sources.0._target_=safetune.data.sources.triplet.load"],
        {},
        2,
        ["data.sources.0._target_", "triplets.load"],
    ),
    ("train-triplets-needs-path", ["train", "data=triplets"], {}, 2, ["data.sources.0.path"]),
    (
        "train-invalid-rows",
        ["train", "data=triplets", "data.sources.0.path={badcat}", "data.leakage_suites=[]"],
        {},
        2,
        ["badcat.jsonl:2", "Space Piracy"],
    ),
    (
        "train-columns-without-plus",
        ["train", "data=triplets", "data.sources.0.path={tmp}/nope.jsonl", "data.sources.0.columns.prompt=question"],
        {},
        2,
        ["nope.jsonl"],
    ),
    (
        "train-bad-completion-length",
        ["train", "trainer.max_completion_length=0"],
        {},
        2,
        ["trainer.max_completion_length"],
    ),
    ("train-bad-resume", ["train", "resume={tmp}/no-checkpoint"], {}, 2, ["resume=", "no-checkpoint"]),
    ("train-template-group-typo", ["train", "template=chatmll"], {}, 2, ["template", "chatml"]),
    (
        "eval-missing-checkpoint",
        ["eval", "checkpoint=/nonexistent"],
        {},
        2,
        ["checkpoint='/nonexistent'", "does not exist"],
    ),
    ("eval-limit-zero", ["eval", "limit_per_group=0"], {}, 2, ["limit_per_group=0", ">= 1"]),
    ("eval-zero-new-tokens", ["eval", "generation.max_new_tokens=0"], {}, 2, ["generation.max_new_tokens"]),
    ("eval-bad-precision", ["eval", "generation.precision=fp8"], {}, 2, ["generation.precision", "fp8"]),
    ("eval-vllm-missing", ["eval", "generation.backend=vllm", "limit_per_group=1"], {}, 2, ["generation.backend=vllm"]),
    (
        "eval-xstest-offline",
        ["eval", "eval/suite=xstest"],
        {**OFFLINE, "SAFETUNE_XSTEST": ""},
        2,
        ["walledai/XSTest", "SAFETUNE_XSTEST"],
    ),
    (
        "eval-xstest-missing-file",
        ["eval", "eval/suite=xstest"],
        {"SAFETUNE_XSTEST": "/nonexistent/xstest.csv"},
        2,
        ["/nonexistent/xstest.csv"],
    ),
    (
        "eval-custom-bad-category",
        ["eval", "eval/suite=custom"],
        {"SAFETUNE_CUSTOM_SUITE": "{badsuite}"},
        2,
        ["suite.jsonl:1", "Not A Category"],
    ),
    (
        "eval-judge-target-typo",
        ["eval", "eval.judge._target_=safetune.eval.judges.keyword.KeywrdJudge"],
        {},
        2,
        ["eval.judge._target_", "KeywordJudge"],
    ),
    (
        "eval-other-checkpoint-dir",
        ["eval", "out_dir={eval_b}", "eval/suite=bundled"],
        {},
        2,
        ["eval-b", "overwrite=true"],
    ),
    ("eval-judge-group-typo", ["eval", "eval/judge=keywrd"], {}, 2, ["did you mean eval/judge=keyword?"]),
    ("compare-missing-dir", ["compare", "{tmp}/nope", "{eval_a}"], {}, 2, ["nope", "evaluation"]),
    ("compare-no-shared-prompts", ["compare", "{eval_a}", "{eval_b}"], {}, 2, ["share no prompts"]),
    (
        "compare-truncated-results",
        ["compare", "{eval_a}", "{eval_trunc}"],
        {},
        2,
        ["eval-trunc/results.json", "not valid JSON"],
    ),
    ("compare-one-dir", ["compare", "{eval_a}"], {}, 2, ["at least two"]),
    ("export-missing-run", ["export", "run_dir={tmp}/no-run"], {}, 2, ["no-run"]),
    ("export-truncated-adapter", ["export", "run_dir={broken_run}"], {}, 2, ["adapter_model.safetensors"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    name, args, env, code, expect = case
    files = {**setup(tmp_path), "tmp": str(tmp_path)}
    argv = [a.format(**files) for a in args]
    env = {k: v.format(**files) for k, v in env.items()}
    got, out, seconds = cli(*argv, env=env, cwd=tmp_path)
    assert got == code, f"{name}: exit {got}, expected {code}\n{out[-3000:]}"
    assert "Traceback" not in out, f"{name}: printed a traceback\n{out[-3000:]}"
    if code == 2:
        assert "error:" in out and "hint:" in out, out[-2000:]
        assert "hint: run with --debug" not in out, f"{name}: the hint says nothing about the fix\n{out[-2000:]}"
        assert "Config search path" not in out, out[-2000:]
    for text in expect:
        assert text in out, f"{name}: {text!r} not in the output\n{out[-3000:]}"
    assert seconds < 120, f"{name}: took {seconds:.0f}s (offline hub access must fail fast)"


def test_there_are_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.slow
def test_debug_switch_shows_the_traceback(tmp_path):
    code, out, _ = cli("train", "trainer.beta=abc", "--debug", cwd=tmp_path)
    assert code != 0 and "Traceback" in out and "trainer.beta" in out


_LIGHT_CHECK = """
import sys
from safetune.cli.common import compose
from safetune.core.config import ConfigError
try:
    compose(sys.argv[1], sys.argv[2:])
except ConfigError as e:
    heavy = sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules)
    print("ERROR", e, "| HEAVY", heavy)
else:
    print("COMPOSED")
"""


@pytest.mark.parametrize(
    "config,overrides,key",
    [
        ("train", ["trainer.learning_rate=-1"], "trainer.learning_rate"),
        ("train", ["trainer.beta=abc"], "trainer.beta"),
        ("train", ["trainer.per_device_train_batch_size=0"], "trainer.per_device_train_batch_size"),
        ("eval", ["generation.max_new_tokens=0"], "generation.max_new_tokens"),
        ("eval", ["generation.top_p=1.5"], "generation.top_p"),
    ],
)
def test_value_errors_fail_before_heavy_imports(config, overrides, key):
    """A trainer/generation value out of range is reported while composing, before torch/transformers/TRL load
    (about a second instead of ten)."""
    p = subprocess.run(
        [sys.executable, "-c", _LIGHT_CHECK, config, *overrides], cwd=REPO, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ERROR" in p.stdout and key in p.stdout, p.stdout
    assert "HEAVY []" in p.stdout, p.stdout


def test_early_value_check_resolves_interpolations_and_passes_good_values():
    """Interpolated values are checked once resolved (a valid ${...} passes, a resolved bad one fails) and a good
    config composes."""
    run = [sys.executable, "-c", _LIGHT_CHECK, "train"]
    ok = subprocess.run([*run, "trainer.learning_rate=${trainer.beta}"], cwd=REPO, capture_output=True, text=True)
    assert ok.stdout.strip().endswith("COMPOSED"), ok.stdout + ok.stderr[-2000:]
    bad = subprocess.run(
        [*run, "trainer.beta=-0.5", "trainer.learning_rate=${trainer.beta}"], cwd=REPO, capture_output=True, text=True
    )
    assert "ERROR" in bad.stdout and "trainer." in bad.stdout and "out of range" in bad.stdout, bad.stdout


_FINISHED_RUN_CHECK = """
import json, sys
from pathlib import Path
from safetune.cli.common import compose
from safetune.cli.train import run
from safetune.core.errors import WorkExistsError
run_dir = Path(sys.argv[1])
run_dir.mkdir(parents=True)
(run_dir / "safetune_run.json").write_text(json.dumps({"finished": True}))
try:
    run(compose("train", [f"run_dir={run_dir}", *sys.argv[2:]]))
except WorkExistsError as e:
    heavy = sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules)
    print("REFUSED", e, "| HEAVY", heavy)
"""


def test_finished_run_dir_is_refused_before_heavy_imports(tmp_path):
    """Training into a finished run directory is refused before torch/transformers/TRL load; the file is kept."""
    p = subprocess.run(
        [sys.executable, "-c", _FINISHED_RUN_CHECK, str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True
    )
    assert "REFUSED" in p.stdout and "HEAVY []" in p.stdout, p.stdout + p.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "safetune_run.json").read_text()) == {"finished": True}


_EARLY_REFUSAL = """
import sys
from safetune.cli.common import compose
from safetune.cli.train import run
from safetune.core.errors import SafetuneError
try:
    run(compose("train", sys.argv[1:]))
except SafetuneError as e:
    heavy = sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules)
    print("REFUSED", type(e).__name__, "|", e.message, "| HINT", e.hint, "| HEAVY", heavy)
"""


def _complete_checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    (path / ".safetune_complete").write_text("")
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("parent", "checkpoint-4"),  # the trainer dir instead of one of its checkpoints: the error names them
        ("interrupted", "interrupted save"),
    ],
)
def test_bad_resume_path_is_refused_before_heavy_imports(tmp_path, case, expect):
    """``resume=<path>`` that is not a complete checkpoint fails in about a second, naming the key, what it found
    and the fix; no run directory is created."""
    target = tmp_path / "trainer"
    if case == "file":
        target.write_text("not a checkpoint")
    elif case == "parent":
        for n in (2, 4):
            _complete_checkpoint(target / f"checkpoint-{n}")
    elif case == "interrupted":
        target.mkdir()
        (target / "trainer_state.json").write_text("{}")  # no completion marker
    run_dir = tmp_path / "new-run"
    p = subprocess.run(
        [sys.executable, "-c", _EARLY_REFUSAL, f"resume={target}", f"run_dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    out = p.stdout + p.stderr[-2000:]
    assert "REFUSED MissingInputError" in p.stdout and "HEAVY []" in p.stdout, out
    assert f"resume='{target}'" in p.stdout and expect in p.stdout and "resume=auto" in p.stdout, out
    assert not run_dir.exists()


def test_complete_resume_path_passes_the_early_check(tmp_path):
    from safetune.core.runs import check_resume_path

    ck = _complete_checkpoint(tmp_path / "trainer" / "checkpoint-3")
    assert check_resume_path(str(ck)) == ck
    assert check_resume_path("auto") is None and check_resume_path(None) is None


@pytest.mark.parametrize("path", ["missing.jsonl", "data/*.jsonl", "emptydir"])
def test_missing_data_file_is_refused_before_heavy_imports(tmp_path, path):
    """A local data path that is not there fails before torch/TRL load, naming ``data.sources.N.path``; the hint
    says where relative paths are read from; no run directory is created."""
    (tmp_path / "emptydir").mkdir()
    run_dir = tmp_path / "new-run"
    p = subprocess.run(
        [sys.executable, "-c", _EARLY_REFUSAL, "data=triplets", f"data.sources.0.path={path}", f"run_dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out = p.stdout + p.stderr[-2000:]
    assert "REFUSED MissingInputError" in p.stdout and "HEAVY []" in p.stdout, out
    assert f"data.sources.0.path='{path}'" in p.stdout and str(tmp_path) in p.stdout, out
    assert not run_dir.exists()


def test_missing_synthesised_pairs_are_refused_before_heavy_imports(tmp_path):
    """A training config that reads on-policy pairs from a synth_dir that holds none fails before torch/TRL load,
    naming the source's config key and the missing pairs file; no run directory is created."""
    run_dir = tmp_path / "new-run"
    missing = tmp_path / "no-synth-here"
    p = subprocess.run(
        [sys.executable, "-c", _EARLY_REFUSAL, "experiment=train/onpolicy", f"synth_dir={missing}", f"run_dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out = p.stdout + p.stderr[-2000:]
    assert "REFUSED MissingInputError" in p.stdout and "HEAVY []" in p.stdout, out
    assert f"data.sources.1.path='{missing}'" in p.stdout and str(missing / "pairs.jsonl") in p.stdout, out
    assert "safetune-data synthesize" in p.stdout, out
    assert not run_dir.exists()


def test_early_synth_check_reads_lists_and_pairs_files(tmp_path):
    from safetune.core.errors import MissingInputError
    from safetune.data.io import precheck_local_paths

    r1, r2 = tmp_path / "round1", tmp_path / "round2"
    r1.mkdir()
    (r1 / "pairs.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    synth = "safetune.synth.source.load"
    precheck_local_paths([{"_target_": synth, "path": str(r1)}, {"_target_": synth, "path": str(r1 / "pairs.jsonl")}])
    with pytest.raises(MissingInputError, match=r"data.sources.0.path.1=.*round2"):
        precheck_local_paths([{"_target_": synth, "name": "rounds", "path": [str(r1), str(r2)]}])


def test_early_path_check_leaves_hub_ids_and_existing_files_alone(tmp_path):
    from safetune.data.io import precheck_local_paths

    good = tmp_path / "prefs.jsonl"
    good.write_text(json.dumps(GOOD_ROW) + "\n")
    precheck_local_paths(
        [
            {"_target_": "safetune.data.sources.triplets.load", "path": str(good)},
            {"_target_": "safetune.data.sources.hh_rlhf.load", "path": "Anthropic/hh-rlhf"},  # hub: loading decides
            {"_target_": "safetune.data.sources.triplets.load", "path": "bundled://safety_prefs"},
            {"_target_": "safetune.synth.source.load", "path": None},  # synth_dir unset: reported by the loader
        ]
    )
    from safetune.core.errors import MissingInputError

    with pytest.raises(MissingInputError, match=r"data.sources.1.path='bundled://nope'"):
        precheck_local_paths([{"path": str(good)}, {"path": "bundled://nope"}])
