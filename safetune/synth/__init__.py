"""On-policy preference synthesis: the policy's own judged answers to project-written prompt pools become preference
pairs (:mod:`.build` holds the rules, :mod:`.run` the stage, :mod:`.pools` the pools and the refusal bank,
:mod:`.source` the training data source). Synthesis reads answers only through the evaluation pipeline."""

from safetune.data.io import PAIRS, pairs_file

__all__ = ["PAIRS", "pairs_file"]
