"""Rendering of evaluation reports and comparisons, decision first: the headline block per checkpoint
(:mod:`.headline`), Markdown tables (:mod:`.markdown`), and self-contained HTML pages with charts (:mod:`.html`) and
a filterable browser of every judged answer (:mod:`.browser`)."""
