"""One adapter per preference-data source, each a ``load(path, ..., on_error) -> Loaded`` that a data config names as
its ``_target_``: custom triplets and the bundled set (:mod:`.triplets`), PKU-SafeRLHF (:mod:`.pku_saferlhf`) and
Anthropic hh-rlhf (:mod:`.hh_rlhf`)."""
