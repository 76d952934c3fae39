"""What an attack will cost, estimated before it runs.

The estimate times the engine's own gradient-matching step (:mod:`gradleak.attacks.matching`:
forward, the client's update with ``create_graph``, cosine distance, backward to the candidates) on
the observation's model and batch, with as many candidates per step as the attack optimises
together, and multiplies by the number of steps the attack's settings ask for. It is measured on
this machine at this moment, so it holds for the model, batch, image size and thread count of the
run. Generative attacks also run their generator every step, so theirs is a lower bound; L-BFGS
(DLG) counts its evaluation budget, an upper bound. The committed cost curve
(``benchmarks/performance/results_cost_curve.md``) shows how the
step cost grows with batch and image size on the reference machine.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .attacks.base import Attack
from .attacks.matching import MatchingConfig, MatchingProblem, objective_fn
from .observation import Observation


def cpu_kind(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor (from ``cpuinfo``; else the platform's processor name) and the vector instructions torch's
    kernels use, e.g. ``"AuthenticAMD AVX512"``: what a seeded optimisation's last digits depend on. Their
    floating-point sums differ between kinds (measured: the default audit's seed 0 ends at 31.31 dB on an AMD CPU
    with AVX2 kernels, 30.67 on AMD with AVX512, 27.75 on Intel with AVX512); two AMD machines with AVX512 kernels,
    days apart, gave the same numbers to the digit."""
    vendor = platform.processor() or platform.machine()
    try:
        with open(cpuinfo) as f:
            vendor = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()}"


CHECK_RECORDS = "check_records"  # a results file's key: CPU kind → what its --check computed on such a CPU


def check_reference(results: dict[str, Any], committed: Any) -> tuple[Any, str]:
    """What a benchmark's ``--check`` compares its rerun with here: the results file's record for this CPU kind
    (the check's own output on such a CPU, written by :func:`record_check`) where there is one, else ``committed``
    (the file's numbers, from the CPU that measured them); and which."""
    kind = cpu_kind()
    record = results.get(CHECK_RECORDS, {}).get(kind)
    return (committed, "the committed numbers") if record is None else (record, f"the record for {kind}")


def record_check(results: dict[str, Any], rerun: Any) -> str:
    """Store ``rerun`` (a ``--check``'s output) in ``results`` as this CPU kind's record; return the kind."""
    kind = cpu_kind()
    results.setdefault(CHECK_RECORDS, {})[kind] = rerun
    return kind


def machine() -> dict[str, object]:
    """What a timing depends on: torch version and threads, CPUs and the vector instructions torch's kernels use
    (``cpu_capability``, e.g. AVX2 or AVX512, and ``cpu_kind``, :func:`cpu_kind`: their floating-point sums differ,
    so seeded optimisations can end apart on another CPU), the OpenMP wait policy, Python, and the load average
    when it was taken (benchmarks record it beside their seconds)."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kind": cpu_kind(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


@dataclass(frozen=True)
class Phase:
    """Part of a run: ``steps`` matching steps on ``candidates`` candidate batches at once, timed."""

    steps: int  # an upper bound where the run may stop early
    candidates: int
    seconds_per_step: float

    def to_json(self) -> dict[str, float | int]:
        return {"steps": self.steps, "candidates": self.candidates, "seconds_per_step": self.seconds_per_step}


@dataclass(frozen=True)
class CostEstimate:
    attack: str
    phases: tuple[Phase, ...]  # one, or one per candidate count under early elimination
    peak_rss_mb: float  # peak resident memory of this process after the probe

    @property
    def seconds(self) -> float:
        return sum(p.steps * p.seconds_per_step for p in self.phases)

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def to_json(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "steps": self.steps,
            "seconds": self.seconds,
            "phases": [p.to_json() for p in self.phases],
            "peak_rss_mb": self.peak_rss_mb,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CostEstimate:
        """Read :meth:`to_json`'s output, or gradleak 0.1's one-phase form (steps, candidates, seconds_per_step)."""
        raw = d.get("phases", [d])
        phases = tuple(Phase(int(p["steps"]), int(p["candidates"]), float(p["seconds_per_step"])) for p in raw)
        return cls(str(d["attack"]), phases, float(d["peak_rss_mb"]))

    def describe(self) -> str:
        first = self.phases[0]
        if len(self.phases) > 1:
            counts = "→".join(str(p.candidates) for p in self.phases)
            how = f"{self.steps} steps, {counts} candidates a step (early elimination)"
        else:
            how = f"{first.steps} steps × {first.seconds_per_step:.3g} s"
            how += f", {first.candidates} candidates a step" if first.candidates > 1 else ""
        return f"{self.attack}: ≈ {_duration(self.seconds)} ({how}; peak memory so far {self.peak_rss_mb:.0f} MB)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def step_seconds(obs: Observation, batch_size: int, candidates: int = 1, reps: int = 3) -> float:
    """Median seconds of one matching step on ``candidates`` batches of ``batch_size`` (after one
    warm-up step, whose one-time costs a long run does not pay again)."""
    targets = torch.arange(batch_size) % obs.num_classes
    problem = MatchingProblem(obs, targets, MatchingConfig(iterations=1, restarts=candidates))
    step = objective_fn(problem)
    x = torch.randn(candidates, batch_size, *obs.input_shape, generator=torch.Generator().manual_seed(0))
    step(x, None)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(x, None)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def estimate(attack: Attack, obs: Observation, batch_size: int) -> CostEstimate | None:
    """The cost of ``attack`` on ``obs``, or ``None`` for attacks that do not run matching steps."""
    units = attack.cost_units()
    if units is None:
        return None
    timed = {n: step_seconds(obs, batch_size, n) for n in sorted({n for _, n in units})}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return CostEstimate(attack.name, tuple(Phase(steps, n, timed[n]) for steps, n in units), rss)
