"""What the rules and the training report see of each step and epoch: where a step's
time went (waiting for data, forward, backward, optimiser), per-layer gradient norms on
sampled steps, and how busy the host was and how much memory the job took.

Cheap enough for every job: the loop already waits for each step's loss, so the phase
clock only reads ``perf_counter``; on CUDA, where kernels run ahead of the host, every
``sample_every``-th step synchronises at each phase to split its time, and the others
count whole steps only.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from dagm_defects.training.rules import EpochFacts, RuleBook, RuleStopped, StepFacts

PHASES = ("data", "forward", "backward", "optimizer")


def memory_limit() -> tuple[int, str]:
    """(bytes, where the figure comes from): the container's cgroup limit, else the host's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        total = psutil.virtual_memory().total
        # cgroup v1 reports "no limit" as a number near 2**63.
        if text.isdigit() and int(text) < total:
            return int(text), f"the container's limit ({path})"
    return psutil.virtual_memory().total, "the host's memory"


@dataclass
class EpochClock:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    sampled: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    steps: int = 0
    step_seconds: float = 0.0


class StepMonitor:
    """One per job. The loop calls ``begin_epoch``, then per step ``data_ready``,
    ``phase("forward")``, ``phase("backward")``, ``gradients(model)``, ``step_done(loss)``,
    then ``end_epoch(...)``. A stopping rule raises :class:`RuleStopped` from ``step_done``
    or ``end_epoch``; the loop leaves without saving the broken state."""

    def __init__(self, rules: RuleBook, device: torch.device, sample_every: int = 10) -> None:
        self.rules = rules
        self.device = device
        self.sample_every = sample_every
        self.total = EpochClock()
        self.limit_bytes, self.limit_source = memory_limit()
        self._process = psutil.Process()
        self._cores = len(os.sched_getaffinity(0))
        self._step = 0
        self._epoch = 0
        self._clock = EpochClock()
        self._grad_norms: dict[str, float] | None = None
        self._marked = 0.0
        self._step_started = 0.0
        self._cpu_started = self._cpu_after_steps = 0.0

    @property
    def _sampling(self) -> bool:
        return self._step % self.sample_every == 0

    def _sync(self) -> None:
        if self.device.type == "cuda" and self._sampling:
            torch.cuda.synchronize(self.device)

    def begin_epoch(self, epoch: int) -> None:
        self._epoch, self._clock = epoch, EpochClock()
        self._cpu_started = self._cpu_after_steps = self._cpu_seconds()
        self._marked = self._step_started = time.perf_counter()

    def phase(self, name: str) -> None:
        """Close the phase that ends here (`name` is the one that just finished)."""
        self._sync()
        now = time.perf_counter()
        self._clock.seconds[name] += now - self._marked
        if self._sampling:
            self._clock.sampled[name] += now - self._marked
        self._marked = now

    def data_ready(self) -> None:
        self.phase("data")

    def gradients(self, model: torch.nn.Module) -> None:
        """Per-parameter gradient norms, on sampled steps (one host sync for all of them)."""
        if not self._sampling:
            self._grad_norms = None
            return
        named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for _, g in named]).tolist()
        self._grad_norms = {name: norm for (name, _), norm in zip(named, norms)}

    def step_done(self, loss: float) -> None:
        self.phase("optimizer")
        now = time.perf_counter()
        self._clock.steps += 1
        self._clock.step_seconds += now - self._step_started
        self._step_started = self._marked = now
        # Read at every step (a /proc read, microseconds) so validation's CPU is left out.
        self._cpu_after_steps = self._cpu_seconds()
        facts = StepFacts(self._epoch, self._step, loss, self._grad_norms)
        self._step += 1
        reason = self.rules.check_step(facts)
        if reason:
            raise RuleStopped(reason)

    def end_epoch(self, train_loss: float, val_loss: float | None, val_ap: float | None,
                  val_chance_ap: float) -> None:
        clock = self._clock
        for name in PHASES:
            self.total.seconds[name] += clock.seconds[name]
            self.total.sampled[name] += clock.sampled[name]
        self.total.steps += clock.steps
        self.total.step_seconds += clock.step_seconds
        utilization, source = self._utilization(clock)
        facts = EpochFacts(
            epoch=self._epoch, train_loss=train_loss, val_loss=val_loss, val_ap=val_ap,
            val_chance_ap=val_chance_ap, steps=clock.steps, data_seconds=clock.seconds["data"],
            step_seconds=clock.step_seconds, utilization=utilization, utilization_source=source,
            peak_memory_bytes=self.peak_memory(), memory_limit_bytes=self.memory_limit(),
            memory_source=self.limit_source if self.device.type != "cuda" else "the GPU's memory",
        )
        reason = self.rules.check_epoch(facts)
        if reason:
            raise RuleStopped(reason)

    def _utilization(self, clock: EpochClock) -> tuple[float | None, str]:
        if clock.step_seconds <= 0:
            return None, ""
        if self.device.type == "cuda":
            # The share of sampled steps' time the GPU spent on forward, backward and the
            # optimiser: what is left is the GPU waiting for the host.
            sampled = sum(clock.sampled.values())
            busy = sampled - clock.sampled["data"]
            return (busy / sampled if sampled else None), "the GPU (sampled steps)"
        cpu = self._cpu_after_steps - self._cpu_started
        return cpu / (clock.step_seconds * self._cores), f"the {self._cores} CPU core(s)"

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def peak_memory(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_reserved(self.device))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def memory_limit(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.get_device_properties(self.device).total_memory)
        return self.limit_bytes

    def profile(self) -> dict:
        """Where the job's step time went, for the report: on CUDA the phases' shares come
        from the synchronised (sampled) steps and are scaled to the whole step time."""
        total = self.total
        if self.device.type == "cuda":
            sampled = sum(total.sampled.values())
            seconds = {k: total.step_seconds * v / sampled if sampled else 0.0 for k, v in total.sampled.items()}
        else:
            seconds = dict(total.seconds)
        seconds["other"] = max(0.0, total.step_seconds - sum(seconds.values()))
        utilization, _ = self._utilization(total) if self.device.type == "cuda" else (None, "")
        return {
            "steps": total.steps, "seconds": seconds, "step_seconds": total.step_seconds,
            "cpu_utilization": None if self.device.type == "cuda" else self._job_cpu_share(),
            "gpu_busy_share": utilization,
            "peak_memory_bytes": self.peak_memory(), "memory_limit_bytes": self.memory_limit(),
            "device": str(self.device),
        }

    def _job_cpu_share(self) -> float | None:
        times = self._process.cpu_times()
        wall = time.time() - self._process.create_time()
        return (times.user + times.system) / (wall * self._cores) if wall > 0 else None
