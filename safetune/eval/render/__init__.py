"""Rendering of evaluation reports and comparisons: Markdown (:mod:`.markdown`) and self-contained HTML with charts
(:mod:`.html`)."""
