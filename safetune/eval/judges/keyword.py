"""Rule-based refusal judge, sentence by sentence (the rules live in :mod:`safetune.core.lexicon`).

Beyond the usual refusal-prefix list it handles: refusal cues at the start and inside the body; apologies that
are not refusals ("Sorry for the wait! Here's..."); refusals without stock phrases ("That's not something I'll
write"); compliance that merely mentions a limit ("I can't guarantee..."); and partial refusals — a refusal
followed (or preceded) by the requested content, as opposed to a refusal followed by safe alternatives.
"""

from __future__ import annotations

from safetune.core.lexicon import RefusalRules
from safetune.eval.judges import Judge


class KeywordJudge(RefusalRules, Judge):
    """Rules over the response text. Labels: refusal, compliance, partial."""

    name = "keyword"
