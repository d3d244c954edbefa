"""On-policy preference synthesis: the policy's own judged answers to project-written prompt pools become preference
pairs (:mod:`.build` holds the rules, :mod:`.run` the stage, :mod:`.pools` the pools and the refusal bank,
:mod:`.source` the training data source). Synthesis reads answers only through the evaluation pipeline."""

from pathlib import Path

PAIRS = "pairs.jsonl"


def pairs_file(path: str) -> Path:
    """The pairs file of a synthesis output directory (or ``path`` itself when it names a ``.jsonl``)."""
    p = Path(path).expanduser()
    return p if p.suffix == ".jsonl" else p / PAIRS
