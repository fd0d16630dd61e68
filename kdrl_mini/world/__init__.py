"""The tiny world: its chain-arithmetic task (:mod:`.task`), model shapes and build plan
(:mod:`.specs`), the build from a seed (:mod:`.build`) and its measured report (:mod:`.report`)."""
