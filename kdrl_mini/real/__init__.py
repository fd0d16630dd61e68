"""The real pretrained pair, offline: SmolLM2-135M and its pruned student (:mod:`.pair`), built
folders cached on disk (:mod:`.cache`), the heal (:mod:`.heal`), the learning check
(:mod:`.learning_check`), word problems (:mod:`.word_problems`), measurements (:mod:`.measure`)
and the ``real-pair`` command (:mod:`.command`)."""
