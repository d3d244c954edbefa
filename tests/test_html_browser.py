"""The evaluation and compare HTML reports rendered by a real browser (headless Chromium).

Reports come from the library (``write_reports`` via the eval stage, ``run_compare``) on small real eval dirs (see
tests/eval_dirs.py). Chromium is driven from the command line: ``--dump-dom`` gives the DOM after the page's load
event, ``--enable-logging=stderr`` its console, ``--screenshot`` a PNG. The reports contain no scripts, so any
console message is a failure. A probe script appended to a *copy* of each page records, after load, every chart
image's decoded size, so "the charts are present" means they decoded, not just that an <img> tag exists.
Screenshots are saved under test-artifacts/ (gitignored). scripts/test.sh installs Chromium when it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.eval_dirs import build_eval_dirs

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

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img[alt="chart"]'));
  var out = imgs.map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; });
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


def render(page: Path) -> tuple[str, list[str], list[list]]:
    """DOM after load, console messages, and the probe's [complete, width, height] per chart image."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom, err = chromium("--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    return dom, console_messages(err), json.loads(m.group(1)) if m else []


def png_info(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def screenshot(page: Path, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    chromium(f"--screenshot={out}", "--window-size=1200,2400", page.as_uri())
    assert out.is_file(), f"Chromium wrote no screenshot for {page}"
    return out


def assert_screenshot_has_content(png: Path) -> None:
    import matplotlib.image as mpimg

    w, h = png_info(png)
    assert (w, h) == (1200, 2400) and png.stat().st_size > 20_000
    px = mpimg.imread(png)[..., :3]
    not_white = (px.mean(axis=2) < 0.9).mean()
    coloured = (px.max(axis=2) - px.min(axis=2) > 0.25).mean()  # matplotlib's blue/orange bars and points
    assert not_white > 0.01, f"screenshot {png} is almost blank ({not_white:.2%} non-white pixels)"
    assert coloured > 0.002, f"screenshot {png} shows no coloured chart marks ({coloured:.3%})"


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
    return {"eval": evals / "sweep" / "pairs-chosen" / "report.html", "compare": Path(art["compare_html"])}


def test_console_capture_detects_js_errors(tmp_path):
    # The console check below must be able to fail: a page with a JS error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><p>x</p><script>missingFunction();</script></body></html>")
    _, msgs, _ = render(bad)
    assert any("missingFunction" in m for m in msgs), msgs


def test_eval_report_renders_charts_without_console_errors(reports):
    dom, msgs, charts = render(reports["eval"])
    assert msgs == [], f"console messages in {reports['eval']}: {msgs}"
    # one checkpoint with harmful and benign prompts: safety scatter + harmful per-category + benign per-type
    assert len(charts) == 3, charts
    assert all(ok and w > 200 and h > 150 for ok, w, h in charts), charts
    assert "<table>" in dom and "Insulting Behavior" in dom and "pairs-chosen" in dom
    png = screenshot(reports["eval"], "eval_report.png")
    assert_screenshot_has_content(png)


def test_compare_report_renders_charts_tables_and_flips(reports):
    dom, msgs, charts = render(reports["compare"])
    assert msgs == [], f"console messages in {reports['compare']}: {msgs}"
    # safety vs over-refusal, harmful per category, benign per type, safety vs helpfulness (trade-off)
    assert len(charts) == 4 and all(ok and w > 200 and h > 150 for ok, w, h in charts), charts
    # all three checkpoints are columns of the side-by-side table; the sweep directory was expanded
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", dom).group(1)
    assert all(n in head for n in ("pairs-chosen", "pairs-rejected")) and head.count("Δ") == 2
    assert "Flipped examples" in dom and dom.count("<blockquote>") >= 2
    png = screenshot(reports["compare"], "compare_report.png")
    assert_screenshot_has_content(png)
