"""The metric schema of ``metrics.jsonl``: every training row has every key, eval rows are separate.

A training row (``"kind": "train"``) holds all of ``TRAIN_KEYS``; a value that does not apply
to the run's algorithm is NaN (e.g. ``beta`` for GRPO, ``reward`` for KD-FKL, whose samples
come from the teacher: their statistics are the ``teacher_*`` keys). An eval row
(``"kind": "eval"``) holds ``EVAL_KEYS``. Plots, the study and the tests import these names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..losses import masked_mean
from .checkpoints import write_error, writing

SUMMED = ("loss", "policy_loss", "kd_loss")  # shares of the whole-rollout loss: micro-batches add up
TRAIN_KEYS = {
    "step": "optimiser steps taken (1-based)",
    "reward": "mean reward of the student's sampled responses",
    "accuracy": "share of the student's sampled responses with a correct answer",
    "response_length": "mean tokens per sampled student response (EOS included)",
    "truncated_frac": "share of sampled student responses cut off by max_new_tokens",
    "teacher_reward": "mean reward of teacher samples (KD-FKL trains on them)",
    "teacher_accuracy": "share of teacher samples with a correct answer (KD-FKL)",
    "teacher_response_length": "mean tokens per teacher sample (KD-FKL)",
    "loss": "the minimised loss (last PPO epoch)",
    "policy_loss": "GRPO surrogate part of the loss",
    "kd_loss": "distillation part of the loss, before beta",
    "beta": "KL coefficient used this step (KDRL only)",
    "kl": "the configured per-token KL estimate on the student's samples",
    "exact_kl": "exact per-token KL(student || teacher) on the student's samples",
    "probe_kl": "exact per-token KL(student || teacher) on the fixed probe set after this step (evaluation steps)",
    "entropy": "student entropy per response token (nats), on the sampled prefixes",
    "clip_frac": "share of tokens where the clipped surrogate branch is active",
    "ratio_mean": "mean pi_theta / pi_old over response tokens",
    "adv_std": "standard deviation of the advantages",
    "kd_frac": "share of response tokens that receive KD (reward-guided KD)",
    "grad_norm": "gradient norm before clipping",
    "skipped": "1 when the step was skipped for a non-finite loss or gradient",
    "step_time": "seconds for the whole step",
    "rollout_time": "seconds sampling and scoring rewards",
    "teacher_time": "seconds in teacher forwards",
    "train_time": "seconds in student forwards, backwards and the optimiser",
    "rollout_tok_s": "sampled tokens per second",
    "train_tok_s": "trained tokens per second (all PPO epochs)",
}
EVAL_KEYS = {
    "step": "optimiser steps taken when evaluated",
    "split": "eval split name (test, blind, ood, ood_control)",
    "eval_accuracy": "greedy accuracy",
    "eval_length": "mean greedy response length (tokens)",
    "eval_truncated": "share of greedy responses cut off by the budget",
    "eval_n": "rows evaluated",
}
TIMING_KEYS = ("step_time", "rollout_time", "teacher_time", "train_time", "rollout_tok_s", "train_tok_s")
NAN = float("nan")


def train_row(values: dict) -> dict:
    """A complete training row: every ``TRAIN_KEYS`` key, NaN where ``values`` has none.

    Tensor values are converted with one device-to-host copy for the whole row."""
    unknown = set(values) - set(TRAIN_KEYS)
    if unknown:
        raise KeyError(f"not in the metric schema: {sorted(unknown)}; add them to kdrl_mini.runs.metrics.TRAIN_KEYS")
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    if tensors:
        host = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]).cpu().tolist()
        values = {**values, **dict(zip(tensors, host))}
    row = {"kind": "train"}
    for k in TRAIN_KEYS:
        v = values.get(k, NAN)
        row[k] = int(v) if k == "step" else float(v)
    return row


def step_row(ro, sums: dict, algo, step: int, ppo_epochs: int, beta: float, grad_norm, skipped: bool,
             laps: "Laps") -> dict:
    """The metrics row of one training step: ``sums`` (the micro-batches' summed statistics, with
    ``tokens``) divided by the token count, the rollout ``ro``'s sample statistics (the teacher's,
    marked ``teacher_``, when the algorithm record ``algo`` samples from the teacher), the coefficient,
    gradient norm and the timings of ``laps``. ``algo`` (:class:`kdrl_mini.algorithms.Algorithm`) says
    which keys apply."""
    mask = ro.mask
    n_tok = sums.pop("tokens").clamp(min=1)
    values = {k: (v if k in SUMMED else v / n_tok) for k, v in sums.items() if k in TRAIN_KEYS}
    sampled = {"reward": ro.rewards.mean(), "accuracy": ro.correct.mean(), "response_length": mask.sum(1).mean(),
               "truncated_frac": ro.batch.truncated.float().mean()}
    if algo.teacher_samples:  # the samples are the teacher's: say so, and keep student-sample keys NaN
        sampled = {"teacher_" + k: v for k, v in sampled.items() if k != "truncated_frac"}
        values.pop("kl", None)
    values.update(sampled, entropy=sums["entropy_sum"] / n_tok, grad_norm=grad_norm, skipped=float(skipped))
    if "exact_kl_sum" in sums:
        values["exact_kl"] = sums["exact_kl_sum"] / n_tok
    if algo.rewarded:
        values["adv_std"] = ro.advantages.std()
    if algo.logs_beta:
        values.update(beta=beta, kd_frac=masked_mean(ro.kd_weights.unsqueeze(-1).expand_as(mask), mask.bool()))
    t = laps.laps
    values.update(step=step, step_time=laps.total(), rollout_time=t["rollout"], teacher_time=t["teacher"],
                  train_time=t["train"], rollout_tok_s=float(mask.sum()) / max(t["rollout"], 1e-9),
                  train_tok_s=float(mask.sum()) * ppo_epochs / max(t["train"], 1e-9))
    return train_row(values)


def eval_row(step: int, split: str, result: dict) -> dict:
    """An eval row from ``rollout.greedy_eval``'s result."""
    return {"kind": "eval", "step": step, "split": split, "eval_accuracy": result["accuracy"],
            "eval_length": result["mean_length"], "eval_truncated": result["truncated"], "eval_n": result["n"]}


def is_eval(row: dict) -> bool:
    return row.get("kind") == "eval" or "split" in row


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) for every line of a metrics file.

    A torn last line (the run was killed while writing it: no parseable JSON, no final newline
    needed) is dropped: its step comes after the last checkpoint and is recomputed on resume. A
    damaged line anywhere else is refused with its line number, and the file is left as it is."""
    lines = path.read_text(errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break  # torn by a kill mid-write
            raise ValueError(f"{path}:{i}: not a JSON metrics row; the file was edited or damaged: fix or delete "
                             f"that line (resume recomputes steps after the last checkpoint)") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{i}: a metrics row needs a JSON object with an integer 'step'; fix or delete "
                             f"that line")
        out.append((line, row))
    return out


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows) of a run folder's ``metrics.jsonl`` (a torn last line is dropped)."""
    rows = [r for _, r in _rows(Path(run_dir) / "metrics.jsonl")]
    return [r for r in rows if not is_eval(r)], [r for r in rows if is_eval(r)]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint's ``step`` (they will be recomputed), and a
    torn last line; a damaged line elsewhere raises before anything is rewritten."""
    if not path.exists():
        return
    keep = [line for line, row in _rows(path) if row["step"] <= step]
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)

        raise write_error(err, path) from None  # a kill here leaves the old file or the new one, never half


def json_line(row: dict) -> str:
    """One JSONL line; NaN is written as ``NaN`` (Python's json reads it back)."""
    return json.dumps(row) + "\n"


def append_row(path: Path, row: dict) -> None:
    """Append one row to a metrics file, flushed (a kill loses at most the line being written); a full
    disk raises one line naming the file (the last checkpoint stays the last good state)."""
    with writing(path), open(path, "a") as f:
        f.write(json_line(row))


class Laps:
    """Named wall-clock laps of one step (synchronising CUDA first so GPU work is counted). With
    ``track_memory`` also each lap's peak memory in bytes (``peaks``): CUDA's allocated peak, or on
    Linux CPUs the process's resident peak (VmHWM), reset at every lap."""

    def __init__(self, device: torch.device | None = None, track_memory: bool = False):
        self.cuda = device is not None and device.type == "cuda"
        self.track_memory = track_memory
        self.peaks: dict[str, int] = {}
        self._reset_peak()
        self.t0 = self.t = self._now()
        self.laps: dict[str, float] = {}

    def _reset_peak(self) -> None:
        if not self.track_memory:
            return
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def _peak(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        try:
            with open("/proc/self/status") as f:
                line = next(line for line in f if line.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            return None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __call__(self, name: str) -> None:
        now = self._now()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.t
        self.t = now
        if self.track_memory:
            peak = self._peak()
            if peak is not None:
                self.peaks[name] = max(self.peaks.get(name, 0), peak)
            self._reset_peak()

    def total(self) -> float:
        return self.t - self.t0
