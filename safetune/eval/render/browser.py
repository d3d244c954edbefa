"""The example browser of the self-contained HTML reports: every judged answer (verdicts.jsonl) in one table with
client-side filters — suite, prompt kind, category / type, verdict, confidence (a max-confidence slider and a
"low confidence only" box), flipped verdicts (comparisons) and a text search.

Plain inline CSS and JavaScript, no network, no library. Every text is HTML-escaped (answers hold arbitrary
characters) and lives in the table itself, never inside the script. Pages stay reasonable: at most ``MAX_ROWS`` rows
(flipped and least confident first, then in suite/group order) and ``MAX_CHARS`` characters per text, with a note.
In a comparison each checkpoint's verdict and answer stand side by side; rows whose refusal verdict differs from
the baseline's (the flips of the McNemar tests) are highlighted.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from safetune.core.schema import VERDICT_LABELS, EvalRecord

MAX_ROWS = 3000
MAX_CHARS = 1500


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _clip(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f" … [{len(text) - MAX_CHARS} more characters]"


def browser_rows(verdicts: Sequence[Sequence[EvalRecord]]) -> list[dict[str, Any]]:
    """One row per (suite, prompt, sample) of any checkpoint: the prompt's fields and each checkpoint's record (None
    where it has no answer); ``flipped``: the refusal verdict differs from the baseline's for some checkpoint."""
    keys: dict[tuple[str, str, int], EvalRecord] = {}
    by_ck = []
    for recs in verdicts:
        d = {r.key: r for r in recs}
        by_ck.append(d)
        for k, r in d.items():
            keys.setdefault(k, r)
    rows = []
    for k, first in keys.items():
        per = [d.get(k) for d in by_ck]
        base = per[0]
        flipped = base is not None and any(o is not None and o.refused != base.refused for o in per[1:])
        confs = [r.confidence for r in per if r is not None and r.confidence is not None]
        rows.append(
            {
                "key": k,
                "suite": first.suite,
                "kind": first.kind or "unknown",
                "group": first.group,
                "prompt": first.prompt,
                "records": per,
                "flipped": flipped,
                "confidence": min(confs) if confs else None,
            }
        )
    return rows


def _cap(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    total = len(rows)
    if total > MAX_ROWS:
        rows = sorted(rows, key=lambda r: (not r["flipped"], 1.0 if r["confidence"] is None else r["confidence"]))
        rows = rows[:MAX_ROWS]
    return sorted(rows, key=lambda r: (r["suite"], r["kind"], r["group"], r["key"])), total


def _options(values: list[str]) -> str:
    return '<option value="">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def browser_html(verdicts: Sequence[Sequence[EvalRecord]], names: Sequence[str], threshold: float = 0.7) -> str:
    """``<section id="examples">``: the filterable table of every judged answer (one checkpoint: label, judge,
    confidence, answer; several, in the order of ``names``: each one's verdict and answer side by side, flips
    highlighted). ``threshold``: below it a verdict is low-confidence."""
    rows, total = _cap(browser_rows(verdicts))
    if not total:
        return (
            '<section id="examples"><h2>Every judged answer</h2>'
            "<p>No verdicts.jsonl next to these results: nothing to browse.</p></section>"
        )
    many = len(names) > 1
    note = f"{total} judged answers"
    if len(rows) < total:
        note = (f"showing {len(rows)} of {total} judged answers ({'flipped and ' if many else ''}least confident "
                "first); every answer is in verdicts.jsonl")  # fmt: skip
    n_flipped = sum(r["flipped"] for r in rows)
    controls = [
        f'<label>suite <select id="f-suite">{_options(sorted({r["suite"] for r in rows}))}</select></label>',
        f'<label>kind <select id="f-kind">{_options(sorted({r["kind"] for r in rows}))}</select></label>',
        f'<label>category / type <select id="f-group">{_options(sorted({r["group"] for r in rows}))}</select></label>',
        f'<label>verdict <select id="f-label">{_options(list(VERDICT_LABELS))}</select></label>',
        '<label>max confidence <input type="range" id="f-conf" min="0" max="1" step="0.05" value="1">'
        '<output id="f-conf-out">1.00</output></label>',
        f'<label><input type="checkbox" id="f-low"> low confidence only (&lt; {threshold:.2f})</label>',
    ]
    if many:
        controls.append(f'<label><input type="checkbox" id="f-flip"> flipped only ({n_flipped})</label>')
    controls.append('<label>search <input type="search" id="f-text" placeholder="prompt or answer"></label>')
    head = ["suite", "kind", "category / type", "prompt"]
    if many:
        for n in names:
            head += [f"{n}: verdict", f"{n}: answer"]
    else:
        head += ["verdict", "judge", "confidence", "answer"]
    out = [
        '<section id="examples"><h2>Every judged answer</h2>',
        f'<p class="note">{_e(note)}. Filters apply in the page (no network).'
        + (" Highlighted rows: the refusal verdict differs from the baseline's." if many else "") + "</p>",
        f'<div class="filters" data-threshold="{threshold}">' + "".join(controls)
        + f'<span id="ex-count">{len(rows)} of {len(rows)} shown</span></div>',
        '<div class="ex-wrap"><table id="ex-table"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>",
    ]  # fmt: skip
    for r in rows:
        labels = " ".join(rec.label for rec in r["records"] if rec is not None)
        conf = "" if r["confidence"] is None else f"{r['confidence']:.4f}"
        attrs = (f'data-suite="{_e(r["suite"])}" data-kind="{_e(r["kind"])}" data-group="{_e(r["group"])}" '
                 f'data-labels="{_e(labels)}" data-conf="{conf}" data-flip="{int(r["flipped"])}"')  # fmt: skip
        cells = [_e(r["suite"]), _e(r["kind"]), _e(r["group"]), f'<div class="tx">{_e(_clip(r["prompt"]))}</div>']
        base = r["records"][0]
        for j, rec in enumerate(r["records"]):
            if rec is None:
                cells += ["–", "–"] if many else ["–", "–", "–", "–"]
                continue
            c = "–" if rec.confidence is None else f"{rec.confidence:.2f}"
            lab = f'<span class="lab lab-{_e(rec.label)}">{_e(rec.label)}</span>'
            if many:
                flip = ' <span class="fl" title="refusal verdict differs from the baseline">⇄ flipped</span>' if (
                    j and base is not None and rec.refused != base.refused) else ""  # fmt: skip
                cells += [
                    f"{lab}{flip}<br><small>{_e(rec.judge)} {c}</small>",
                    f'<div class="tx">{_e(_clip(rec.response))}</div>',
                ]
            else:
                cells += [lab, _e(rec.judge), c, f'<div class="tx">{_e(_clip(rec.response))}</div>']
        cls = ' class="flip"' if r["flipped"] else ""
        out.append(f"<tr{cls} {attrs}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody></table></div>", f"<script>{SCRIPT}</script>", "</section>"]
    return "\n".join(out)


# Reads the filter controls, hides the rows that fail one, and says how many are shown. Exposed as
# window.safetuneFilter so a test (or a user's console) can re-run it after setting a control.
SCRIPT = """
(function () {
  'use strict';
  var table = document.getElementById('ex-table');
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var box = document.querySelector('#examples .filters');
  var threshold = parseFloat(box.getAttribute('data-threshold'));
  function el(id) { return document.getElementById(id); }
  function value(id) { var e = el(id); return e ? e.value : ''; }
  function checked(id) { var e = el(id); return !!(e && e.checked); }
  function apply() {
    var suite = value('f-suite'), kind = value('f-kind'), group = value('f-group'), label = value('f-label');
    var maxConf = parseFloat(value('f-conf') || '1'), low = checked('f-low'), flip = checked('f-flip');
    var text = value('f-text').toLowerCase();
    var out = el('f-conf-out');
    if (out) { out.textContent = maxConf.toFixed(2); }
    var shown = 0;
    rows.forEach(function (r) {
      var d = r.dataset, c = d.conf === '' ? NaN : parseFloat(d.conf);
      var ok = (!suite || d.suite === suite) && (!kind || d.kind === kind) && (!group || d.group === group) &&
        (!label || d.labels.split(' ').indexOf(label) >= 0) &&
        (isNaN(c) ? maxConf >= 1 : c <= maxConf + 1e-9) && (!low || (!isNaN(c) && c < threshold)) &&
        (!flip || d.flip === '1') && (!text || r.textContent.toLowerCase().indexOf(text) >= 0);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    el('ex-count').textContent = shown + ' of ' + rows.length + ' shown';
    return shown;
  }
  Array.prototype.forEach.call(box.querySelectorAll('select, input'), function (e) {
    e.addEventListener('input', apply);
    e.addEventListener('change', apply);
  });
  window.safetuneFilter = apply;
  apply();
})();
"""

BROWSER_CSS = """#examples .filters{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;margin:0.5em 0;
font-size:13px;
position:sticky;top:0;background:#fff;padding:6px 0;z-index:1}#ex-count{font-weight:bold}
.ex-wrap{overflow-x:auto;max-width:100%}#ex-table{font-size:12px;width:100%}
#ex-table td{text-align:left;vertical-align:top}#ex-table th{text-align:left}#ex-table tr[hidden]{display:none}
.fl{color:#a15c00;font-size:11px;white-space:nowrap}#ex-table tr.flip td{background:#fff3cd}
#ex-table .tx{white-space:pre-wrap;overflow-wrap:anywhere;max-width:420px;min-width:160px}
.lab{padding:0 4px;border-radius:3px}.lab-refusal{background:#fde2e1}.lab-compliance{background:#e3f4e3}
.lab-partial{background:#fff0c2}.note{font-size:13px;color:#555}"""
