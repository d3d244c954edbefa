"""Shared foundations every stage builds on, importing no other safetune package: the schema (``PreferenceExample``,
``EvalPrompt``, ``EvalRecord``, ``Verdict``), chat formatting and templates, the precision decision, the refusal
lexicon, config helpers, model loading and run directories."""
