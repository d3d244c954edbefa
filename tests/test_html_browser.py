"""The evaluation and compare HTML reports rendered by a real browser (headless Chromium).

Reports come from the library (``write_reports`` via the eval stage, ``run_compare``) on small real eval dirs (see
tests/eval_dirs.py). Chromium is driven from the command line: ``--dump-dom`` gives the DOM after the page's load
event, ``--enable-logging=stderr`` its console, ``--screenshot`` a PNG. The pages hold one script (the example
browser's filters); any console message is a failure. A probe script appended to a *copy* of each page records,
after load: every chart image's decoded size (so "the charts are present" means they decoded), the order and layout
of the sections, the headline's numbers, and the visible rows of the example browser after the probe sets its
filters the way a user does (set a control, fire its change event). Checked at two window widths (1280, 500).
Screenshots are saved under test-artifacts/ (gitignored). scripts/test.sh installs Chromium when it is missing.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.eval_dirs import build_eval_dirs, flips_between

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not installed: apt-get install -y chromium chromium-driver (scripts/test.sh does it)",
    ),
]

WIDTHS = (1280, 500)  # a desktop and a phone-sized window (500 px is headless Chromium's narrowest window)

PROBE = """<script>
window.addEventListener('load', function () {
  var out = {};
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img[alt="chart"]'));
  out.charts = imgs.map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; });
  var h1 = document.querySelector('h1');
  out.afterTitle = h1 && h1.nextElementSibling ? h1.nextElementSibling.id : null;
  out.sections = Array.prototype.map.call(document.querySelectorAll('body > section'), function (e) { return e.id; });
  out.tops = {};
  out.sections.forEach(function (id) { out.tops[id] = document.getElementById(id).getBoundingClientRect().top; });
  out.scrollWidth = document.documentElement.scrollWidth;
  out.innerWidth = window.innerWidth;
  out.cards = Array.prototype.map.call(document.querySelectorAll('#headline .hl-card'), function (c) {
    var rows = {};
    Array.prototype.forEach.call(c.querySelectorAll('tr[data-key]'), function (r) {
      rows[r.getAttribute('data-key')] = {value: r.getAttribute('data-value'), delta: r.getAttribute('data-delta'),
        p: r.getAttribute('data-p'), lo: r.getAttribute('data-ci-low'), hi: r.getAttribute('data-ci-high'),
        text: r.textContent};
    });
    return {name: c.getAttribute('data-checkpoint'), selected: c.classList.contains('selected'),
            right: c.getBoundingClientRect().right, rows: rows};
  });
  out.filters = Array.prototype.map.call(document.querySelectorAll('#examples .filters [id]'),
                                         function (e) { return e.id; });
  function visible() {
    return Array.prototype.filter.call(document.querySelectorAll('#ex-table tbody tr'), function (r) {
      return getComputedStyle(r).display !== 'none';
    }).length;
  }
  function set(id, v) {
    var e = document.getElementById(id);
    if (e.type === 'checkbox') { e.checked = v; } else { e.value = v; }
    e.dispatchEvent(new Event('change'));
  }
  out.visible = {all: visible()};
  set('f-kind', 'harmful'); out.visible.harmful = visible(); set('f-kind', '');
  set('f-label', 'refusal'); out.visible.refusal = visible(); set('f-label', '');
  set('f-conf', '0.75'); out.visible.conf075 = visible(); set('f-conf', '1');
  set('f-low', true); out.visible.low = visible(); set('f-low', false);
  if (document.getElementById('f-flip')) { set('f-flip', true); out.visible.flipped = visible(); set('f-flip', false); }
  set('f-text', 'ZZZ-no-such-text'); out.visible.text = visible(); set('f-text', '');
  out.count = document.getElementById('ex-count').textContent;
  var p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});
</script>"""


def chromium(*args: str) -> tuple[str, str]:
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return p.stdout, p.stderr


def console_messages(stderr: str) -> list[str]:
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)


def render(page: Path, width: int = 1280) -> tuple[str, list[str], dict]:
    """DOM after load, console messages, and what the probe recorded (see PROBE) at this window width."""
    probe = page.with_name(f"{page.stem}.probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom, err = chromium("--dump-dom", f"--window-size={width},2400", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    return dom, console_messages(err), json.loads(html.unescape(m.group(1))) if m else {}


def png_info(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def screenshot(page: Path, name: str, width: int) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    chromium(f"--screenshot={out}", f"--window-size={width},2400", page.as_uri())
    assert out.is_file(), f"Chromium wrote no screenshot for {page}"
    return out


def assert_screenshot_has_content(png: Path, width: int) -> None:
    import matplotlib.image as mpimg

    w, h = png_info(png)
    assert (w, h) == (width, 2400) and png.stat().st_size > 20_000
    px = mpimg.imread(png)[..., :3]
    not_white = (px.mean(axis=2) < 0.9).mean()
    coloured = (px.max(axis=2) - px.min(axis=2) > 0.25).mean()  # matplotlib's blue/orange bars and points
    assert not_white > 0.01, f"screenshot {png} is almost blank ({not_white:.2%} non-white pixels)"
    assert coloured > 0.002, f"screenshot {png} shows no coloured chart marks ({coloured:.3%})"


def verdicts(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "verdicts.jsonl").read_text().splitlines()]


def same(attr: str | None, x: float | None) -> bool:
    """A data-* value (Python's repr of the float, 'nan' or empty) equals the JSON number."""
    if x is None or x != x:
        return attr in ("", "nan", None)
    return attr is not None and float(attr) == pytest.approx(x, abs=1e-12)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    from hydra import compose, initialize_config_dir

    from safetune import CONF_DIR
    from safetune.eval.compare import run_compare

    evals = build_eval_dirs()
    out = tmp_path_factory.mktemp("compare")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("compare", overrides=[f"evals=[{evals / 'base'},{evals / 'sweep'}]", f"out_dir={out}"])
    _, art = run_compare(cfg)
    return {
        "eval": evals / "sweep" / "pairs-chosen" / "report.html",
        "eval_dir": evals / "sweep" / "pairs-chosen",
        "compare": Path(art["compare_html"]),
        "compare_json": Path(art["compare_json"]),
    }


def test_console_capture_detects_js_errors(tmp_path):
    # The console check below must be able to fail: a page with a JS error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><p>x</p><script>missingFunction();</script></body></html>")
    _, msgs, _ = render(bad)
    assert any("missingFunction" in m for m in msgs), msgs


def assert_layout(probe: dict, width: int) -> None:
    """Headline first (right after the title), then charts, tables, examples; nothing wider than the window."""
    assert probe["afterTitle"] == "headline", probe["afterTitle"]
    assert probe["sections"] == ["headline", "charts", "tables", "examples"], probe["sections"]
    tops = [probe["tops"][s] for s in probe["sections"]]
    assert tops == sorted(tops), tops
    assert probe["innerWidth"] == width, probe["innerWidth"]
    assert probe["scrollWidth"] <= width, probe["scrollWidth"]  # no page-wide overflow: wide tables scroll inside
    assert all(c["right"] <= width for c in probe["cards"]), [c["right"] for c in probe["cards"]]
    assert set(probe["filters"]) >= {"f-suite", "f-kind", "f-group", "f-label", "f-conf", "f-low", "f-text", "ex-count"}


def assert_browser_filters(probe: dict, per_row: list[list[dict]]) -> None:
    """The rows the filter script shows equal the rows counted from verdicts.jsonl (one list of records per row)."""
    v = probe["visible"]
    conf = [min((r["confidence"] for r in rs if r.get("confidence") is not None), default=None) for rs in per_row]
    assert v["all"] == len(per_row)
    assert v["harmful"] == sum(rs[0]["kind"] == "harmful" for rs in per_row) > 0
    assert v["refusal"] == sum(any(r["label"] == "refusal" for r in rs) for rs in per_row) > 0
    assert v["conf075"] == sum(c is not None and c <= 0.75 for c in conf)
    assert v["low"] == sum(c is not None and c < 0.7 for c in conf)
    assert v["text"] == 0 and probe["count"] == f"{len(per_row)} of {len(per_row)} shown"


def test_eval_report_headline_charts_and_browser(reports):
    results = json.loads((reports["eval_dir"] / "results.json").read_text())
    s = results["summary"]
    recs = verdicts(reports["eval_dir"])
    for width in WIDTHS:
        dom, msgs, probe = render(reports["eval"], width)
        assert msgs == [], f"console messages in {reports['eval']} at width {width}: {msgs}"
        assert_layout(probe, width)
        # one checkpoint with harmful and benign prompts: safety scatter + harmful per-category + benign per-type
        assert len(probe["charts"]) == 3, probe["charts"]
        assert all(ok and w > 200 and h > 150 for ok, w, h in probe["charts"]), probe["charts"]
        (card,) = probe["cards"]
        rows = card["rows"]
        assert card["name"] == results["meta"]["label"] == "pairs-chosen"
        ov = s["overall"]
        for key, r in (("harmful_refusal", ov["harmful"]["micro"]), ("over_refusal", ov["benign"]["micro"]),
                       ("contradictory", ov["harmful"]["contradictory"])):  # fmt: skip
            assert same(rows[key]["value"], r["rate"]) and same(rows[key]["lo"], r["ci_low"]), (key, rows[key], r)
            assert same(rows[key]["hi"], r["ci_high"]), (key, rows[key], r)
        sel = s["selectivity"]["overall"]
        srow = rows["selectivity/overall"]
        assert same(srow["value"], sel["diff"]) and same(srow["lo"], sel["ci_low"]) and same(srow["hi"], sel["ci_high"])
        assert same(rows["low_confidence"]["value"], s["labels"]["low_confidence"])
        assert same(rows["human_labelled"]["value"], s["labels"]["human_labelled"])
        assert "keyword" in rows["judge_accuracy"]["text"] and "refusal vs not" in rows["judge_accuracy"]["text"]
        assert_browser_filters(probe, [[r] for r in recs])
        assert "<table>" in dom and "Insulting Behavior" in dom and "pairs-chosen" in dom
        png = screenshot(reports["eval"], f"eval_report_{width}.png", width)
        assert_screenshot_has_content(png, width)


def test_compare_report_headline_charts_tables_and_browser(reports):
    cmp = json.loads(reports["compare_json"].read_text())
    names = cmp["names"]
    by_ck = [{(r["suite"], r["prompt_id"], r.get("sample", 0)): r for r in verdicts(Path(d))} for d in cmp["dirs"]]
    keys = sorted(set().union(*by_ck))
    per_row = [[ck[k] for ck in by_ck if k in ck] for k in keys]
    base = by_ck[0]
    flipped = sum(
        k in base
        and any(k in ck and (ck[k]["label"] == "refusal") != (base[k]["label"] == "refusal") for ck in by_ck[1:])
        for k in keys
    )
    assert flipped == flips_between(Path(cmp["dirs"][0]), Path(cmp["dirs"][1])) + flips_between(
        Path(cmp["dirs"][0]), Path(cmp["dirs"][2])
    )  # in these dirs each prompt flips for one of the two checkpoints
    for width in WIDTHS:
        dom, msgs, probe = render(reports["compare"], width)
        assert msgs == [], f"console messages in {reports['compare']} at width {width}: {msgs}"
        assert_layout(probe, width)
        # safety vs over-refusal, safety vs helpfulness (trade-off), harmful per category, benign per type
        charts = probe["charts"]
        assert len(charts) == 4 and all(ok and w > 200 and h > 150 for ok, w, h in charts), charts
        cards = probe["cards"]
        assert [c["name"] for c in cards] == names
        assert [c["selected"] for c in cards] == [n == cmp["selection"]["selected"] for n in names]
        for i, c in enumerate(cards):
            ov = cmp["overall"][names[i]]
            assert same(c["rows"]["harmful_refusal"]["value"], ov["harmful"]["micro"]["rate"])
            assert same(c["rows"]["over_refusal"]["value"], ov["benign"]["micro"]["rate"])
            if i:
                t = cmp["tradeoff"][i - 1]
                assert same(c["rows"]["harmful_refusal"]["delta"], t["refusal_rate"]["delta"])
                assert same(c["rows"]["harmful_refusal"]["p"], t["refusal_rate"]["p_value"])
                assert same(c["rows"]["over_refusal"]["delta"], t["over_refusal_rate"]["delta"])
                assert same(c["rows"]["over_refusal"]["p"], t["over_refusal_rate"]["p_value"])
        assert "Selection: refuse harm, not life" in dom.split('id="charts"')[0]  # the selection is in the headline
        # all three checkpoints are columns of the side-by-side table; the sweep directory was expanded
        head = re.search(r"<section id=.tables.>.*?<thead><tr>(.*?)</tr></thead>", dom, re.S).group(1)
        assert all(n in head for n in ("pairs-chosen", "pairs-rejected")) and head.count("Δ") == 2
        assert "Flipped examples" in dom and dom.count("<blockquote>") >= 2
        assert_browser_filters(probe, per_row)
        assert probe["visible"]["flipped"] == flipped > 0
        assert dom.count('class="flip"') == flipped
        png = screenshot(reports["compare"], f"compare_report_{width}.png", width)
        assert_screenshot_has_content(png, width)
