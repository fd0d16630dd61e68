"""Task data for any world: JSONL split files (:mod:`.files`), rows checked against the models
(:mod:`.checks`), and data through Hugging Face ``datasets`` (:mod:`.source`)."""
