"""How the benchmarks measure: loops run in turn, repeats, peak memory, FLOPs, the machine.

Machines here are shared and noisy: the same distill step drifted smoothly between 245 and
345 ms over a minute (2-core VM, measured). So every comparison is a ratio of things measured
together: the training loops being compared run in turn, a few steps each (`round_robin`), so
every loop sees the same machine, and a ratio is the median over repeats of the ratio within a
repeat."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak memory of the code inside `with PeakMemory(device) as peak:`.

    CUDA: the allocator's peak. CPU: the process's resident high-water mark, reset on entry
    (Linux: writing 5 to /proc/self/clear_refs); `gb` is the peak, `added_gb` the peak above
    the resident set on entry (what the measured code itself held at most)."""

    def __init__(self, device: torch.device, turn_steps: int = 5):
        self.device, self.turn_steps = device, turn_steps
        self.gb = self.added_gb = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                _CLEAR_REFS.write_text("5")
            except OSError:  # not Linux, or not allowed: the peak is the process's so far
                pass
            self._base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status_kb("VmHWM") * 1024
        self.gb, self.added_gb = peak / 2**30, max(peak - self._base, 0) / 2**30
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Repeats:
    """Per-variant figures over repeats: {variant: [one value per repeat]}."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over repeats of num/den measured in the same repeat."""
        return statistics.median(a / b for a, b in zip(self.values[num], self.values[den]))

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.values[name]), max(self.values[name])


class Loop(Protocol):
    """A training loop that can be advanced a few steps at a time."""

    def advance(self, n: int) -> list[float]:
        """Run the next n steps (fewer at the end); return each step's seconds."""

    @property
    def finished(self) -> bool: ...


def round_robin(loops: dict[str, Loop], turn_steps: int) -> dict[str, list[float]]:
    """Advance the loops in turn, `turn_steps` steps each, until all are finished; returns each
    loop's step durations. Every loop samples the machine's drift alike. (Turns of one step
    would be fairest to drift, but each loop would then start every step with caches filled by
    another model: an additive cost that pulls every ratio towards 1. Turns of five steps keep
    that small. Everything runs in this thread: the same distill loop ran 15% slower in a
    second Python thread here, whatever the other threads did.)"""
    out: dict[str, list[float]] = {name: [] for name in loops}
    while not all(loop.finished for loop in loops.values()):
        for name, loop in loops.items():
            if not loop.finished:
                out[name] += loop.advance(turn_steps)
    return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn (forward and backward alike), by torch's FLOP counter: matmuls
    and convolutions, the work that bounds a UNet step (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def machine(device: torch.device) -> dict:
    """What produced the figures: hardware, versions, date, commit."""
    import diffusers

    from harness.env import cpu_name, git_state

    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": str(device),
        "commit": git_state()["commit"],
        "dirty": git_state()["dirty"],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info
