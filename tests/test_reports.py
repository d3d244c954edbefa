"""Reports lead with the decision: the Markdown headline numbers equal the metrics JSON (results.json, compare.json),
the example browser escapes every text and stays small, and the shipped judge-accuracy file is reproducible.

The expected strings are formatted here, independently of the renderer, from the JSON the library wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from safetune import CONF_DIR
from safetune.eval.judge_check import ACCURACY_FILE
from tests.eval_dirs import build_eval_dirs

ACCURACY = json.loads(ACCURACY_FILE.read_text())


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def rate_cell(r: dict) -> str:
    if r["n"] == 0:
        return "**– (none of 0)**"
    return f"**{pct(r['rate'])} of {r['n']}** ({pct(r['ci_low'])}–{pct(r['ci_high'])})"


def sel_cell(d: dict) -> str:
    return f"**{pp(d['diff'])}** ({pp(d['ci_low'])} to {pp(d['ci_high'])})"


def judge_cell(name: str) -> str:
    a = ACCURACY["judges"].get(name)
    if a is None:
        return f"`{name}`: not measured"
    b, c, r = a["binary_accuracy_ci"], a["accuracy_ci"], a["refusal_incl_partial_accuracy_ci"]
    return (
        f"`{name}`: binary (complied vs not) {pct(a['refusal_incl_partial_accuracy'])} ({pct(r[0])}–{pct(r[1])}), "
        f"strict (full refusal vs not) {pct(a['binary_accuracy'])} ({pct(b[0])}–{pct(b[1])}), "
        f"3-class {pct(a['accuracy'])} ({pct(c[0])}–{pct(c[1])}), partial F1 {a['partial_f1']:.2f}, "
        f"on {a['n']} human-labelled answers of {a['file']}"
    )


def headline(md: str) -> tuple[list[str], dict[str, list[str]], str]:
    """(column heads, {measure: cells}, the whole section) of the headline block, which must come first."""
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline", f"the first section is {sections[0]!r}, not the headline"
    block = md.split("## Headline", 1)[1].split("\n## Per suite and group", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines() if line.startswith("|")
    ]
    table = {r[0]: r[1:] for r in rows[2:]}
    assert len(table) == len(rows) - 2, "a measure appears twice in the headline"
    return rows[0][1:], table, block


def verdict_count(d: Path) -> int:
    return len((d / "verdicts.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def evals() -> Path:
    return build_eval_dirs()


@pytest.fixture(scope="module")
def compared(evals, tmp_path_factory) -> tuple[dict, str]:
    from safetune.eval.compare import run_compare

    out = tmp_path_factory.mktemp("cmp")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("compare", overrides=[f"evals=[{evals / 'base'},{evals / 'sweep'}]", f"out_dir={out}"])
    _, art = run_compare(cfg)
    return json.loads(Path(art["compare_json"]).read_text()), Path(art["compare_md"]).read_text()


@pytest.mark.parametrize("which", ["base", "sweep/pairs-chosen", "sweep/pairs-rejected"])
def test_eval_report_headline_equals_results_json(evals, which):
    from scipy.stats import t as student_t

    d = evals / which
    res = json.loads((d / "results.json").read_text())
    s, meta = res["summary"], res["meta"]
    cols, table, _ = headline((d / "report.md").read_text())
    assert cols == [meta["label"]]
    ov = s["overall"]
    assert table["harmful refusal ↑"] == [rate_cell(ov["harmful"]["micro"])]
    assert table["over-refusal on benign prompts ↓"] == [rate_cell(ov["benign"]["micro"])]
    assert table["selectivity: harmful − benign refusal ↑"] == [sel_cell(s["selectivity"]["overall"])]
    assert table["contradictory refusals (share of refusals) ↓"] == [rate_cell(ov["harmful"]["contradictory"])]
    lab = s["labels"]  # written by write_reports for every eval dir (the eval stage, or here)
    n = verdict_count(d)
    assert table["low-confidence verdicts (review these)"] == [
        f"{lab['low_confidence']} of {n} (confidence < {lab['threshold']:.2f})"
    ]
    assert table["human-labelled verdicts"] == [f"{lab['human_labelled']} of {n}"]
    assert table["judge, measured agreement with human labels (95% CI)"] == [judge_cell(meta["judge"])]
    ret_key = "retention: helpful log-lik/token (helpful_reference) ↑"
    if which == "base":  # the eval stage ran retention
        ll = json.loads((d / "retention.json").read_text())["sources"]["helpful_reference"]["loglik"]
        m, sd = sum(ll) / len(ll), math.sqrt(sum((x - sum(ll) / len(ll)) ** 2 for x in ll) / (len(ll) - 1))
        h = student_t.ppf(0.975, len(ll) - 1) * sd / math.sqrt(len(ll))
        assert s["retention"]["helpful_reference"]["loglik_mean"] == pytest.approx(m)
        assert table[ret_key] == [
            f"**{s['retention']['helpful_reference']['loglik_mean']:.3f}** ({m - h:.3f} to {m + h:.3f})"
        ]
    else:
        assert ret_key not in table


def test_console_prints_the_headline_verbatim(evals, compared):
    from rich.text import Text

    for md in [(evals / "base" / "report.md").read_text(), compared[1]]:
        _, _, block = headline(md)
        assert Text.from_markup(block).plain == block  # no part of it is taken for rich markup by the CLIs


def test_compare_headline_equals_compare_json(evals, compared):
    cmp, md = compared
    cols, table, block = headline(md)
    sel = cmp["selection"]["selected"]
    assert cols == [n + (" ✔ selected" if n == sel else "") for n in cmp["names"]]
    assert "## Selection: refuse harm, not life" in block and md.count("## Selection") == 1
    results = [json.loads((Path(d) / "results.json").read_text())["summary"] for d in cmp["dirs"]]
    for i, name in enumerate(cmp["names"]):
        ov = cmp["overall"][name]
        harm, ben = table["harmful refusal ↑"][i], table["over-refusal on benign prompts ↓"][i]
        selc = table["selectivity: harmful − benign refusal ↑"][i]
        if i == 0:
            assert harm == rate_cell(ov["harmful"]["micro"]) and ben == rate_cell(ov["benign"]["micro"])
            assert selc == sel_cell(results[0]["selectivity"]["overall"])
            continue
        t = cmp["tradeoff"][i - 1]
        assert t["other"] == name
        r, b = t["refusal_rate"], t["over_refusal_rate"]
        assert harm == f"{rate_cell(ov['harmful']['micro'])}; Δ {pp(r['delta'])}, McNemar p={r['p_value']:.3g}"
        assert ben == f"{rate_cell(ov['benign']['micro'])}; Δ {pp(b['delta'])}, McNemar p={b['p_value']:.3g}"
        d = results[i]["selectivity"]["overall"]["diff"] - results[0]["selectivity"]["overall"]["diff"]
        assert selc == f"{sel_cell(results[i]['selectivity']['overall'])}; Δ {pp(d)}"
        assert table["judge, measured agreement with human labels (95% CI)"][i] == judge_cell("keyword")


def _write_eval(d: Path, labels: list[str], confidence: list[float], loglik: list[float], judge: str) -> None:
    """A small eval dir: verdicts, retention.json and reports, as the eval stage writes them."""
    from safetune.core.schema import EvalRecord
    from safetune.eval.metrics import summarise
    from safetune.eval.report import write_reports
    from safetune.eval.review import labels_summary

    recs = [
        EvalRecord(prompt_id=f"p{i}", suite="s", kind="harmful" if i < 6 else "benign",
                   group="Drugs" if i < 6 else "definitions", label=lab, prompt=f"prompt {i} <b>&",
                   response=f"{lab} answer {i} </script><img src=x onerror=alert(1)>", judge=judge, confidence=c)
        for i, (lab, c) in enumerate(zip(labels, confidence))
    ]  # fmt: skip
    recs[0].judge = "human"  # one human label
    d.mkdir(parents=True)
    (d / "verdicts.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    ids = [f"h{i}" for i in range(len(loglik))]
    mean = sum(loglik) / len(loglik)
    (d / "retention.json").write_text(
        json.dumps(
            {
                "checkpoint": d.name,
                "sources": {"helpful_reference": {"ids": ids, "loglik": loglik, "loglik_mean": mean, "n": len(ids)}},
            }
        )
    )
    summary = summarise(recs)
    summary["labels"] = labels_summary(recs, 0.7)
    summary["retention"] = {"helpful_reference": {"n": len(ids), "loglik_mean": mean}}
    write_reports(d, summary, {"label": d.name, "checkpoint": d.name, "judge": judge})


def test_compare_headline_retention_judges_and_labels(tmp_path):
    from safetune.eval.compare import run_compare

    base_labels = ["compliance"] * 5 + ["refusal"] + ["compliance"] * 6
    tuned_labels = ["refusal"] * 5 + ["partial"] + ["refusal"] * 2 + ["compliance"] * 4
    conf = [0.95, 0.5, 0.65, 0.9, 0.99, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99, 0.55]
    _write_eval(tmp_path / "base", base_labels, conf, [-2.0, -2.5, -1.5, -3.0, -2.2], "learned")
    _write_eval(tmp_path / "tuned", tuned_labels, conf[::-1], [-2.6, -2.9, -2.0, -3.1, -2.8], "hf_classifier")
    report = (tmp_path / "base" / "report.md").read_text()
    _, table, _ = headline(report)
    assert table["judge, measured agreement with human labels (95% CI)"] == [judge_cell("learned")]
    assert table["human-labelled verdicts"] == ["1 of 12"]
    low = sum(c < 0.7 for c in conf[1:])  # the human-labelled verdict is not "low confidence"
    assert table["low-confidence verdicts (review these)"] == [f"{low} of 12 (confidence < 0.70)"]
    assert "## Review these: low-confidence verdicts" in report and "`s/p1#0` | compliance | 0.50 |" in report
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "compare", overrides=[f"evals=[{tmp_path / 'base'},{tmp_path / 'tuned'}]", f"out_dir={tmp_path / 'c'}"]
        )
    _, art = run_compare(cfg)
    cmp = json.loads(Path(art["compare_json"]).read_text())
    cols, table, _ = headline(Path(art["compare_md"]).read_text())
    r = cmp["tradeoff"][0]["retention"]["helpful_reference"]["loglik"]
    q = [cmp["quality"][n]["retention"]["helpful_reference"]["loglik_mean"] for n in cmp["names"]]
    ret = table["retention: helpful log-lik/token (helpful_reference) ↑"]
    assert ret[0] == f"**{q[0]:.3f}**"
    assert ret[1] == f"**{q[1]:.3f}**; Δ {r['delta']:+.3f} (95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f})"
    judges = table["judge, measured agreement with human labels (95% CI)"]
    assert judges == [judge_cell("learned"), "`hf_classifier`: not measured"]
    c = cmp["overall"]["tuned"]["harmful"]["contradictory"]
    cb = cmp["overall"]["base"]["harmful"]["contradictory"]
    contradictory = table["contradictory refusals (share of refusals) ↓"]
    assert contradictory[1] == f"{rate_cell(c)}; Δ {pp(c['rate'] - cb['rate'])}"
    page = Path(art["compare_html"]).read_text()
    assert "<img src=x" not in page and "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_browser_escapes_and_caps_rows():
    from html.parser import HTMLParser

    from safetune.core.schema import EvalRecord
    from safetune.eval.render import browser

    evil = 'x" onmouseover="alert(1)'
    recs = [
        EvalRecord(prompt_id=f"p{i}", suite="s&<t>", kind="harmful", group=evil, label="refusal",
                   prompt="<script>alert(1)</script>", response="a & b </td></tr><img src=x>" * (i == 0), judge="j",
                   confidence=i / (browser.MAX_ROWS + 10))
        for i in range(browser.MAX_ROWS + 10)
    ]  # fmt: skip
    out = browser.browser_html([recs], ["only"])
    tags: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            assert all(not k.startswith("on") for k, _ in attrs), attrs

    P().feed(out)
    assert tags.count("script") == 1 and "img" not in tags  # only the filter script; no text became a tag
    assert tags.count("tr") == browser.MAX_ROWS + 1  # header + capped rows
    assert f"showing {browser.MAX_ROWS} of {browser.MAX_ROWS + 10} judged answers" in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "s&amp;&lt;t&gt;" in out
    # the least confident answers are kept
    assert (
        'data-conf="0.0000"' in out and f'data-conf="{(browser.MAX_ROWS + 9) / (browser.MAX_ROWS + 10):.4f}"' not in out
    )


def test_judge_accuracy_file_is_reproducible_and_well_formed():
    from safetune.eval.judge_check import (
        SHIPPED_JUDGES,
        accuracy_entry,
        check_judge,
        load_check_rows,
        measured_accuracy,
    )
    from safetune.eval.judges.embedding import bundled_file
    from safetune.eval.judges.keyword import KeywordJudge

    heldout = bundled_file("judge_heldout.jsonl")
    rows = load_check_rows(heldout)
    data = measured_accuracy()
    assert data["file"] == heldout.name and data["sha256"] == hashlib.sha256(heldout.read_bytes()).hexdigest(), (
        f"{ACCURACY_FILE} was measured on another {heldout.name}: regenerate it with "
        "safetune.eval.judge_check.write_measured_accuracy()"
    )
    assert set(data["judges"]) == set(SHIPPED_JUDGES)
    for name, e in data["judges"].items():
        assert e["n"] == len(rows) and e["file"] == heldout.name, name
        for key in ("binary_accuracy", "refusal_incl_partial_accuracy", "accuracy", "partial_f1"):
            lo, hi = e[f"{key}_ci"]
            assert 0 <= lo <= e[key] <= hi <= 1, (name, key, e[key], lo, hi)
        assert 0 <= e["ece"] <= 1
    assert measured_accuracy("learned") == data["judges"]["learned"] and measured_accuracy("llm_judge") is None
    fresh = json.loads(json.dumps(accuracy_entry(check_judge(KeywordJudge(), rows), heldout)))
    stored = data["judges"]["keyword"]
    assert fresh.keys() == stored.keys()
    for key, value in stored.items():
        if isinstance(value, str):
            assert fresh[key] == value, key
        else:
            assert fresh[key] == pytest.approx(value, abs=1e-9), f"{ACCURACY_FILE}: keyword {key} is not reproducible"


def test_compare_names_tell_same_label_evaluations_apart(evals, tmp_path):
    """Two evaluations with the same label under equally named parents (``a/r1/eval``, ``b/r1/eval``) get names
    that differ (the shortest distinguishing path suffix), and the tables keep one column per evaluation."""
    import shutil

    from safetune.eval.compare import compare

    src = evals / "sweep" / "pairs-chosen"
    dirs = [tmp_path / "a" / "r1" / "eval", tmp_path / "b" / "r1" / "eval", tmp_path / "a" / "r2" / "eval"]
    for d in dirs:
        shutil.copytree(src, d)
    cmp = compare(dirs)
    assert cmp["names"] == ["pairs-chosen (a/r1/eval)", "pairs-chosen (b/r1/eval)", "pairs-chosen (a/r2/eval)"]
    assert compare([dirs[0], evals / "base"])["names"][0] == "pairs-chosen"  # unique labels stay as they are
