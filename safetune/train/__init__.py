"""Training stage: the DPO recipe (:mod:`.recipe`), ``DPOConfig`` (:mod:`.dpo_config`), every TRL extension
(:mod:`.trl_ext`), the shared reference cache (:mod:`.refcache`), callbacks, sweeps, export and the chat-template
preflight. ``python -m safetune.train`` runs ``safetune-train``."""
