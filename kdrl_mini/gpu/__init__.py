"""One GPU: presets (:mod:`.presets`), model shapes from ``config.json`` (:mod:`.shapes`), memory
estimates before loading (:mod:`.memory`), the time model (:mod:`.timing`), and the preset study
(:mod:`.preset_study`)."""
