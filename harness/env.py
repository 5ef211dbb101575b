"""The environment a cell ran in: code version, packages, machine, scheduler ids."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from harness import distributed

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "torch-pruning", "clean-fid", "mlflow", "hydra-core", "submitit")
REPO = Path(__file__).resolve().parent.parent


def git_state(repo: Path = REPO) -> dict:
    """The commit of `repo`; for a frozen copy of the code (a SLURM submission's snapshot),
    the commit it was made from and where the copy is."""
    if (snapshot := repo / "CODE.json").is_file():
        record = json.loads(snapshot.read_text())
        return {"commit": record.get("commit"), "dirty": record.get("dirty"), "snapshot": record.get("path")}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def slurm_ids() -> dict:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_NTASKS",
            "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ and "SLURM_JOB_ID" in os.environ}


def environment(device: str = "cpu") -> dict:
    import torch

    from harness import numerics

    described = numerics.describe()
    return {
        "git": git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "slurm": slurm_ids(),
        "processes": distributed.world().size,  # data-parallel ranks training the cell
        "cpu": cpu_name(),
        "numerics": described,  # kernel set, BLAS, threads, determinism, GPU and cuDNN settings
        "kernel_set": numerics.kernel_set(described, device),
    }
