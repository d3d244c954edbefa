"""Evaluation stage: the pipeline (prompts + model -> judged EvalRecords -> summary), generation, suites, judges,
rubric, retention, statistics, metrics, comparisons and rendering."""
