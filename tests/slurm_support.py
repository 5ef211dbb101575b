"""What the test_slurm* modules share: a tiny cell's overrides on the local cluster, and helpers
that ask the cluster (sacct, squeue) or a sweep's folder (cells, submissions, attempts) what
happened. The cluster itself is the session fixture `cluster` (tests/conftest.py): one for the
whole session, shared by these modules on every pytest-xdist worker."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import SMALL, SMALL_WORLD, run_cli

TINY = [*SMALL_WORLD, *SMALL, "pruning.ratio=0.3"]
ON_SLURM = ["launcher=slurm_local"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster's daemons run as root")


def slurm(cluster, *args: str, check: bool = True) -> str:
    return subprocess.run(list(args), env={**os.environ, **cluster}, capture_output=True, text=True, check=check).stdout


def sacct_states(cluster, job: str) -> dict[str, str]:
    out = slurm(cluster, "sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State")
    return {j: s.split()[0] for j, s in (line.split("|") for line in out.split("\n") if line)}


def cell_metrics(out_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in out_dir.glob("cells/*/results.json")}


def sweep_cells(out_dir) -> list[str]:
    (cells,) = list(out_dir.glob("sweeps/*/cells.json"))
    return [c["cell_id"] for c in json.loads(cells.read_text())]


def submissions(out_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out_dir / "slurm" / "submissions").glob("*.json"))]


def attempts(cell_dir) -> list[dict]:
    path = cell_dir / "environment.json"
    return json.loads(path.read_text())["attempts"] if path.exists() else []


def latest_step(cell_dir, stage: str = "finetune") -> int:
    steps = [int(p.stem.split("_")[1]) for p in (cell_dir / "checkpoints" / stage).glob("step_*.pt")]
    return max(steps, default=0)


def wait_until(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def jobs_cli(cluster, out_dir, *args) -> subprocess.CompletedProcess:
    return run_cli(["harness.jobs", "--out-dir", str(out_dir), *args], env=cluster)
