"""Studies over many runs: the runner shared by every study (:mod:`.runner`), the README's brief
comparison (:mod:`.brief`), the pre-registered study v4 (:mod:`.v4`: its plan; :mod:`.v4_claims`,
:mod:`.v4_figures`, :mod:`.v4_diagnosis`), the claims and statistics every study judges with
(:mod:`.claims`, :mod:`.stats`), the per-arm table (:mod:`.tables`) and figures (:mod:`.plots`)."""
