"""Data parallelism over processes: torchrun, or the tasks of one SLURM job (the paper trained
on 4×H100). Each process (rank) trains the same model on its share of every global batch;
gradients are averaged before each optimizer step, so the run does the arithmetic of one
process with the global batch, up to the order of floating-point sums.

For that to hold, every rank draws the randomness of the *global* batch (noise, timesteps,
caption dropout, VAE samples, sampler starts) from the shared per-step generator and keeps its
own rows (`batch_draw`), just as it keeps its own rows of the data (`shard`). Rank 0 alone
writes: checkpoints, logs, markers, MLflow, and it alone evaluates.

Gloo on CPUs, NCCL on GPUs. Exact for losses that are means over the batch (all of the
harness's), which is what averaging per-rank gradients computes."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


_WORLD = World()
_SHARDING: World | None = None  # set while a training stage runs (`data_parallel`)
_ALONE = False  # set while rank 0 works by itself (`alone`)


def world() -> World:
    return _WORLD


def _together() -> bool:
    return _WORLD.size > 1 and not _ALONE


@contextmanager
def alone():
    """Rank 0's own work (evaluation) while the other ranks wait: no collectives within, so a
    cell that evaluation needs is found or run by rank 0 by itself."""
    global _ALONE
    previous, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = previous


def setup(timeout_min: float = 60.0) -> World:
    """Join the process group described by the environment (torchrun's RANK / WORLD_SIZE /
    LOCAL_RANK and MASTER_ADDR / MASTER_PORT; `from_slurm_tasks` fills them in a SLURM job).
    A single process needs nothing."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))
        _WORLD = World(rank, size, local)
    return _WORLD


def rendezvous_port(job_id: str, attempt: int) -> int:
    """The job's rendezvous port, the same in each of its tasks: below the kernel's ephemeral
    range, where the ports of outgoing connections (gloo's own among them) are drawn, since a
    port taken there makes the rendezvous fail (submitit's default draws 20000-60000, mostly
    inside it); a requeued attempt gets another one. CRC32, not hash(): hash() is salted per process."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    first = 20000 if low > 21000 else 1024
    return first + zlib.crc32(f"{job_id}/{attempt}".encode()) % (low - first)


def from_slurm_tasks() -> None:
    """In a SLURM job with several tasks: the env:// variables from the job's own (rank = task).
    MASTER_PORT set by the user wins."""
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        env = submitit.helpers.TorchDistributedEnvironment()  # reads a MASTER_PORT already set
        if "MASTER_PORT" not in os.environ:
            env.master_port = rendezvous_port(job.job_id, int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        env.export(set_cuda_visible_devices=False, overwrite=True)


@contextmanager
def data_parallel(world_: World | None = None):
    """Within: batches and batch-shaped random draws are this rank's share of the global ones."""
    global _SHARDING
    previous, _SHARDING = _SHARDING, (world_ or (_WORLD if _together() else World()))
    try:
        yield
    finally:
        _SHARDING = previous


def _rows(n_local: int) -> tuple[int, int]:
    return _SHARDING.rank * n_local, (_SHARDING.rank + 1) * n_local


def _is_rows(value) -> bool:
    return (torch.is_tensor(value) and value.dim() > 0) or isinstance(value, list)


def shard(batch: dict) -> dict:
    """This rank's rows of a global batch (tensors and lists whose length is the batch size)."""
    if _SHARDING is None or _SHARDING.size == 1:
        return batch
    n = max((len(v) for v in batch.values() if _is_rows(v)), default=0)
    if n % _SHARDING.size:
        raise ValueError(f"a batch of {n} does not split over {_SHARDING.size} processes: "
                         f"use batch sizes divisible by {_SHARDING.size}")
    lo, hi = _rows(n // _SHARDING.size)
    return {k: v[lo:hi] if _is_rows(v) and len(v) == n else v for k, v in batch.items()}


def batch_draw(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """`draw(m)` returns m rows of randomness. Draws the global batch's rows (n per rank) and
    returns this rank's: every rank consumes the generator as one process with the global
    batch does, and gets the rows that process would give its samples."""
    if _SHARDING is None or _SHARDING.size == 1:
        return draw(n)
    lo, hi = _rows(n)
    return draw(n * _SHARDING.size)[lo:hi]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of the ranks' gradients, in one collective (missing gradients count as zeros)."""
    if not _together():
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= _WORLD.size
    offset = 0
    for p in params:  # each gradient becomes a view of the averaged buffer
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def average(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of logged values (same keys on every rank)."""
    if not _together():
        return values
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(flat)
    return {k: v / _WORLD.size for k, v in zip(keys, flat.tolist())}


def barrier() -> None:
    if _together():
        dist.barrier()


def decide(flag: bool | None) -> bool:
    """Rank 0's decision (e.g. "this cell needs training"), for every rank."""
    if not _together():
        return bool(flag)
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
