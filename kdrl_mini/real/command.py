"""The ``real-pair`` command: the SmolLM2 pair built offline (and healed), a few KDRL steps with a
greedy evaluation before and after, or the learning check."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import models
from ..runs import folder
from ..trainer import Trainer
from . import learning_check, pair
from .cache import MARKER
from .measure import parameter_count


def real_pair(set_fields: dict, steps: int | None = None, cache_dir: str | None = None, keep_every: int = 2,
              output_dir: str | None = None, seed: int = 0, heal: bool = True, eval_size: int | None = None,
              learn: bool = False, reward_samples: int = 8, threads: int | None = None) -> int:
    """``kdrl-mini real-pair``: build (or reuse) the pair, then a few KDRL steps with greedy
    evaluation before and after; ``learn``: the learning check (:mod:`.learning_check`)."""
    cache = Path(cache_dir) if cache_dir else pair.DEFAULT_CACHE
    if learn and not heal:
        raise ValueError("--learn trains the healed student; drop --no-heal")
    if output_dir is not None and ((Path(output_dir) / "metrics.jsonl").exists()
                                   or folder.latest_checkpoint(output_dir) is not None):
        raise ValueError(f"--output-dir {output_dir} already holds a run; real-pair trains a fresh one: choose another "
                         f"--output-dir or delete that folder (only the default CACHE_DIR/runs folder is replaced)")
    t0 = time.time()
    paths = pair.materialize_pair(cache, keep_every, seed=seed, heal=heal)
    student = paths.get("healed", paths["student"])
    print(f"pair ready in {time.time() - t0:.0f} s: teacher {paths['teacher']}, student {student}")
    if heal:
        h = json.loads((student / MARKER).read_text())
        print(f"healed on {h['examples']} teacher answers: SFT loss {h['loss_first']:.2f} -> {h['loss_last']:.2f} "
              f"(built in {h['label_seconds'] + h['fit_seconds']:.0f} s; cached, reused until the recipe changes)")
    overrides = {"max_steps": steps, "seed": seed, "threads": threads, "output_dir": output_dir,
                 "eval_size": eval_size}
    overrides = {**set_fields, **{k: v for k, v in overrides.items() if v is not None}}
    if learn:
        cfg = learning_check.learn_config(cache, keep_every, **overrides)
        learning_check.write_pool(paths["data"])
    else:
        cfg = pair.real_config(cache, keep_every, healed=heal, **{"max_steps": 3, **overrides})
    trainer = Trainer(cfg)
    before = [trainer.evaluate(split) for split in trainer.eval_splits]  # the same eval as at the end
    # the demo always starts a fresh run: its own default folder is replaced, a folder you name never is
    train = lambda: trainer.train(overwrite=output_dir is None)  # noqa: E731
    if learn:
        print(f"sampled reward on the {len(trainer.world.train)} pool prompts ({cfg.train_split}) and as many test "
              f"prompts, {reward_samples} samples each, before and after training ...")
        log, result = learning_check.run(trainer, reward_samples, train)
    else:
        log = train()
    (Path(cfg.output_dir) / "eval_before.jsonl").write_text("".join(json.dumps(row) + "\n" for row in before))
    print(f"{'step':>4} {'reward':>7} {'exact_kl':>9} {'step_s':>7}")
    for m in (row for row in log if row.get("kind") == "train"):
        print(f"{m['step']:>4} {m['reward']:>7.3f} {m['exact_kl']:>9.3f} {m['step_time']:>7.1f}")
    for b, e in zip(before, (row for row in log if row.get("kind") == "eval")):
        print(f"{e['split']:>5}: greedy accuracy {b['eval_accuracy']:.3f} before -> {e['eval_accuracy']:.3f} after  "
              f"length {e['eval_length']:.1f}  (n={cfg.eval_size})")
    if learn:
        print(learning_check.summary(result) + f"\nfigure: {Path(cfg.output_dir) / 'pool_reward.png'}")
    trainable, total = models.trainable_parameters(trainer.world.student)
    print(f"parameters: teacher {parameter_count(paths['teacher']):,}, student {parameter_count(student):,} "
          f"(LoRA trainable {trainable:,})")
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0
