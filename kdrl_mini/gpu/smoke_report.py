"""The verdict of ``kdrl-mini smoke``: each phase's measured peak and time against the estimate, the device's
own memory, the library versions, the study's time projected from the measurements, and one line saying
whether the card and the estimate can be trusted."""

from __future__ import annotations

import importlib.metadata
import threading
from types import SimpleNamespace

import torch

from . import memory as me
from .timing import run_seconds

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "vllm")
PASS, FAIL, FLAG = "pass", "FAIL", "FLAG"


def versions() -> dict[str, str]:
    """Installed versions of the libraries the GPU path runs on (and the CUDA build), "-" when absent."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    found["cuda"] = torch.version.cuda or "-"
    return found


def memory_verdict(measured: int | None, low: int, high: int, on_cuda: bool) -> tuple[str, str]:
    """(verdict, why) of one measured peak against the estimate's range [``low``, ``high``] (bytes): above
    ``high`` the estimate is too low (a fuller card could run out of memory: FAIL); below
    ``FAR_TOO_HIGH * low`` it is far too high (it refuses settings that would fit: FLAG). On the CPU the
    resident peak is the whole process, not comparable: not judged."""
    if measured is None:
        return PASS, "not measured separately"
    if not on_cuda:
        return PASS, "memory not compared off CUDA"
    if measured > high:
        return FAIL, f"estimate too low: {me.gib(measured)} GiB measured > {me.gib(high)} estimated"
    if measured < me.FAR_TOO_HIGH * low:
        return FLAG, f"estimate far too high: {me.gib(measured)} GiB measured < {me.FAR_TOO_HIGH:g} x {me.gib(low)}"
    return PASS, f"within the estimate ({me.gib(low)}-{me.gib(high)} GiB)"


def phase_rows(run: dict, est: me.MemoryEstimate, on_cuda: bool) -> dict[str, dict]:
    """Per phase: measured time (the last step before the forced one, not the warm-up), estimated time,
    measured allocated peak (the highest of every step, the forced worst case included), the estimate's
    range for it (what is always held plus the phase, without the CUDA context), verdict."""
    steps = run["steps"]
    typical = steps[-2] if len(steps) > 1 else steps[-1] if steps else {"laps": {}}  # the last of normal length
    est_seconds = {**est.detail.get("phase_seconds", {}), "eval": est.detail.get("eval_seconds")}
    rows = {}
    for phase in me.PHASES:
        if phase == "eval":
            seconds, peak = run["eval"]["seconds"], run["eval"]["peak"]
        else:
            seconds = typical["laps"].get(_LAP.get(phase, phase))
            peaks = [s["peaks"][phase] for s in steps if phase in s["peaks"]]
            peak = max(peaks) if peaks else None
        context = est.part("cuda context")  # not the allocator's: mem_get_info shows it (the run's device use)
        low = est.low_group("always") + est.low_group(phase) - context
        high = est.always + est.phases[phase] - context
        verdict, why = memory_verdict(peak, low, high, on_cuda)
        if run.get("error") and run.get("failed_phase") == phase:
            verdict, why = FAIL, run["error"]
        rows[phase] = {"seconds": seconds, "estimated_seconds": est_seconds.get(phase), "peak": peak,
                       "estimated": [low, high], "verdict": verdict, "why": why}
    return rows


_LAP = {"generate": "rollout"}  # the trainers' lap names (kdrl_mini.runs.metrics.Laps)


def projection(study_cfg, study_est: me.MemoryEstimate, runs: dict, n_runs: int) -> dict:
    """The study's hours projected from the measured step and evaluation times (the last normal step of the
    slowest algorithm measured; an evaluation scaled to the study's rows per call, rough) next to the
    estimate's."""
    steps = [r["steps"][-2 if len(r["steps"]) > 1 else -1]["seconds"] for r in runs.values() if r["steps"]]
    evals = [r["eval"]["seconds"] for r in runs.values() if r["eval"]["seconds"]]
    calls = -(-study_cfg.eval_size // study_cfg.eval_batch_size)
    measured = SimpleNamespace(step_seconds=max(steps) if steps else float("nan"),
                               detail={"eval_seconds": max(evals) * calls if evals else
                                       study_est.detail.get("eval_seconds", float("nan"))})
    return {"measured_hours": n_runs * run_seconds(study_cfg, measured) / 3600,
            "estimated_hours": n_runs * run_seconds(study_cfg, study_est) / 3600, "runs": n_runs}


def verdict(report: dict) -> tuple[str, list[str]]:
    """("PASS" | "PASS with flags" | "FAIL", the reasons) over every phase of every algorithm."""
    fails = [f"{a} {p}: {r['why']}" for a, run in report["runs"].items() for p, r in run["phases"].items()
             if r["verdict"] == FAIL]
    flags = [f"{a} {p}: {r['why']}" for a, run in report["runs"].items() for p, r in run["phases"].items()
             if r["verdict"] == FLAG]
    fails += [f"{a}: step {s['step']} loss {s['loss']} skipped {s['skipped']}" for a, run in report["runs"].items()
              for s in run["steps"] if not (s["loss"] == s["loss"] and abs(s["loss"]) != float("inf")) or s["skipped"]]
    return ("FAIL" if fails else "PASS with flags" if flags else "PASS"), fails + flags


def lines(report: dict) -> str:
    """The smoke's screen: what ran, each algorithm's phases and steps, the device, the projection, the verdict."""
    gib = lambda b: "n/a" if b is None else me.gib(b)  # noqa: E731
    sec = lambda s: "n/a" if s is None or s != s else f"{s:.1f}"  # noqa: E731
    v = report["versions"]
    out = [f"smoke of preset {report['preset']} on {report['device']}: engine {report['engine']}, generation "
           f"{report['generation']}",
           "versions: " + ", ".join(f"{k} {x}" for k, x in v.items())]
    for algorithm, run in report["runs"].items():
        times = [s["seconds"] for s in run["steps"]]
        out.append(f"{algorithm}: step seconds {', '.join(sec(t) for t in times)} (first: warm-up; last: forced "
                   f"worst case, every response {report['max_new_tokens']} tokens); estimate {sec(run['estimated_step_seconds'])}")
        out.append(f"  {'phase':<9}{'s meas.':>8}{'s est.':>8}{'peak GiB':>10}{'est. GiB':>12}  verdict")
        for phase, r in run["phases"].items():
            est = f"{gib(r['estimated'][0])}-{gib(r['estimated'][1])}"
            out.append(f"  {phase:<9}{sec(r['seconds']):>8}{sec(r['estimated_seconds']):>8}{gib(r['peak']):>10}"
                       f"{est:>12}  {r['verdict']}: {r['why']}")
        d = run["device"]
        out.append(f"  whole run: reserved peak {gib(d['reserved'])} GiB, device in use at peak {gib(d['device'])} GiB "
                   f"(context, cached blocks, vLLM's pool, other processes) of {gib(d['device_total'])}; estimate "
                   f"{gib(run['estimated_total'])}")
    p = report["projection"]
    out.append(f"study ({p['runs']} runs): about {p['measured_hours']:.1f} h projected from these measurements, "
               f"{p['estimated_hours']:.1f} h estimated")
    out.append(f"verdict: {report['verdict']}" + "".join(f"\n  - {r}" for r in report["reasons"]))
    return "\n".join(out)


class DeviceWatch:
    """Samples, every ``interval`` seconds in a thread, the allocator's reserved bytes and the device's used
    bytes (``torch.cuda.mem_get_info``: everything on the card, the CUDA context and vLLM's pool included);
    on the CPU the process's resident set. Keeps the maxima (``reserved``, ``device``, ``device_total``)."""

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.cuda, self.interval = device.type == "cuda", interval
        self.reserved = self.device = self.device_total = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        if self.cuda:
            free, total = torch.cuda.mem_get_info()
            self.reserved = max(self.reserved or 0, torch.cuda.memory_reserved())
            self.device, self.device_total = max(self.device or 0, total - free), total
            return
        try:
            with open("/proc/self/status") as f:
                rss = int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024
            self.device = max(self.device or 0, rss)
        except (OSError, StopIteration):
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "DeviceWatch":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def as_dict(self) -> dict:
        return {"reserved": self.reserved, "device": self.device, "device_total": self.device_total}
