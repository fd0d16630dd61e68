"""Studies over many runs: the runner shared by every study (:mod:`.runner`), the README's brief
comparison (:mod:`.brief`), the pre-registered reproduction (:mod:`.reproduction`), its
statistics (:mod:`.stats`), status while it runs (:mod:`.status`) and figures (:mod:`.plots`)."""
