"""Sweeps on a real SLURM cluster: slurm/cluster/start.sh brings up a one-node cluster on
localhost (slurmctld, slurmd, slurmdbd with a private MariaDB, munge) for this module, unless
SLURM_CONF already points at a running one, and stops it afterwards."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO, SMALL, SMALL_WORLD, run_cli

TINY = [*SMALL_WORLD, *SMALL, "pruning.ratio=0.3"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster's daemons run as root")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The environment that reaches the cluster (SLURM_CONF)."""
    if os.environ.get("SLURM_CONF") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        yield {"SLURM_CONF": os.environ["SLURM_CONF"]}
        return
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "HARNESS_SLURM_PORT": "16917"}
    started = subprocess.run([str(REPO / "slurm" / "cluster" / "start.sh"), str(folder)], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield {"SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    finally:
        subprocess.run([str(REPO / "slurm" / "cluster" / "stop.sh"), str(folder)], capture_output=True)


def sacct_states(env: dict, job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|") for line in out.split())


def cell_metrics(out_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in out_dir.glob("cells/*/results.json")}


def test_sweep_runs_as_a_job_array_and_matches_a_local_run(cluster, tmp_path):
    import mlflow

    grid = ["-m", "method=distill,two_stage"]
    on_slurm = run_cli(["harness", *grid, "launcher=slurm_local", *TINY, f"out_dir={tmp_path / 'slurm'}"], env=cluster)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = run_cli(["harness", *grid, *TINY, f"out_dir={tmp_path / 'local'}"])
    assert local.returncode == 0, local.stderr[-3000:]

    remote, here = cell_metrics(tmp_path / "slurm"), cell_metrics(tmp_path / "local")
    assert set(remote) == set(here) and len(here) == 2
    for cell in here:
        assert remote[cell] == pytest.approx(here[cell], rel=1e-5, abs=1e-6), cell

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'slurm' / 'mlflow.db'}")
    runs = [r for r in mlflow.search_runs(experiment_names=["harness"], output_format="list") if "harness.cell_id" in r.data.tags]
    job_ids = {r.data.tags["harness.cell_id"]: r.data.tags["slurm.job_id"] for r in runs}
    assert set(job_ids) == set(here)
    arrays = {j.split("_")[0] for j in job_ids.values()}
    assert len(arrays) == 1, job_ids  # one array for the sweep
    states = sacct_states(cluster, arrays.pop())
    assert {states[j] for j in job_ids.values()} == {"COMPLETED"}, states
