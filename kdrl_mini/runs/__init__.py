"""A run on disk: its folder and lock (:mod:`.folder`), the ``metrics.jsonl`` schema
(:mod:`.metrics`), checkpoints (:mod:`.checkpoints`), what a run loads (:mod:`.loading`) and
figures read back from its files (:mod:`.plots`)."""
