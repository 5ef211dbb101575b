"""What a cell costs: wall time, CPU and GPU hours, peak memory.

Efficiency claims (one stage instead of two) need these next to the metrics. CPU time is the
process's (all threads); GPU hours are wall time × the GPUs the cell holds; peak memory is the
process's resident set, sampled, and on CUDA the allocator's peak."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from harness import distributed

_STATUS = Path("/proc/self/status")


def resident_bytes() -> int:
    """The process's resident set now (0 where /proc is not there)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CostMeter:
    """Measures the code run inside `with CostMeter() as meter:`; `meter.figures()` after."""

    def __init__(self, device: torch.device | None = None, every_s: float = 0.2):
        self.device, self.every_s = device, every_s
        self._peak_rss, self._stop = 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self._peak_rss = max(self._peak_rss, resident_bytes())

    def __enter__(self):
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self._peak_rss = resident_bytes()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak_rss = max(self._peak_rss, resident_bytes())
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._cpu0
        return False

    def figures(self) -> dict:
        cuda = self.device is not None and self.device.type == "cuda"
        gpus = distributed.world().size if cuda else 0  # every rank holds one GPU for the whole cell
        return {
            "wall_s": self.wall,
            "cpu_h": self.cpu / 3600,
            "gpu_h": self.wall * gpus / 3600,
            "gpus": gpus,
            "peak_rss_gb": self._peak_rss / 2**30,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None,
        }
