"""Sweeps on a real SLURM cluster (slurm/cluster/start.sh: a one-node cluster on localhost with
slurmctld, slurmd, slurmdbd, a private MariaDB and munge): job arrays, rejected requests, failed
and retried cells, status/tail/cancel, crash safety, code snapshots, GPU requests, plans, and the
local cluster's own safety. Time limits and requeues: test_slurm_requeue.py; tuning workers:
test_slurm_tune.py; the paper preset end to end: test_slurm_paper.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, compose, order_of_sums_tolerance, run_cli
from tests.slurm_support import (ON_SLURM, TINY, attempts, cell_metrics, jobs_cli, needs_root, sacct_states, slurm,
                                 submissions, sweep_cells, wait_until)

pytestmark = needs_root


def test_sweep_runs_as_a_job_array_and_matches_a_local_run(cluster, tmp_path):
    import mlflow

    grid = ["-m", "method=distill,two_stage"]
    env = {**cluster, "OMP_NUM_THREADS": "1"}  # the same arithmetic here as in the 1-CPU jobs
    on_slurm = run_cli(["harness", *grid, *ON_SLURM, "hydra.launcher.wait=true", *TINY, f"out_dir={tmp_path / 'slurm'}"], env=env)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = run_cli(["harness", *grid, *TINY, f"out_dir={tmp_path / 'local'}"], env=env)
    assert local.returncode == 0, local.stderr[-3000:]

    remote, here = cell_metrics(tmp_path / "slurm"), cell_metrics(tmp_path / "local")
    assert set(remote) == set(here) and len(here) == 2
    for cell in here:
        assert remote[cell] == pytest.approx(here[cell], rel=1e-5, abs=1e-6), cell

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'slurm' / 'mlflow.db'}")
    runs = [r for r in mlflow.search_runs(experiment_names=["harness"], output_format="list") if "harness.cell_id" in r.data.tags]
    job_ids = {r.data.tags["harness.cell_id"]: r.data.tags["slurm.job_id"] for r in runs}
    assert set(job_ids) == set(here)
    # two arrays: the distill cell's, and the two-stage cell's, which starts from it and waits
    # for it (--dependency=afterany) rather than training it in its own job
    distill, two_stage = sweep_cells(tmp_path / "slurm")
    subs = submissions(tmp_path / "slurm")
    assert [s["cells"] for s in subs] == [[distill], [two_stage]] and all(s["state"] == "submitted" for s in subs)
    assert {**subs[0]["job_ids"], **subs[1]["job_ids"]} == job_ids
    times = {}
    for cell, job in job_ids.items():
        out = slurm(cluster, "sacct", "-n", "-X", "-P", "-j", job.split("_")[0], "-o", "JobID,State,Start,End")
        (row,) = [line.split("|") for line in out.split("\n") if line.startswith(job + "|")]
        assert row[1] == "COMPLETED", row
        times[cell] = row[2:]
    assert times[two_stage][0] >= times[distill][1], times  # ISO times: it started after the distill job ended
    sub = subs[0]

    # the jobs ran the frozen copy of the code, and know its commit
    env = json.loads((tmp_path / "slurm" / "cells" / sub["cells"][0] / "environment.json").read_text())
    assert env["git"]["snapshot"] == sub["code"]["path"] and sub["code"]["path"].startswith(str(tmp_path / "slurm" / "slurm" / "code"))
    assert env["git"]["commit"] == sub["code"]["commit"]

    status = jobs_cli(cluster, tmp_path / "slurm", "status")
    assert status.returncode == 0, status.stderr
    assert "2 cells: 2 completed" in status.stdout
    for cell, job in job_ids.items():
        assert any(cell in line and job in line and "fid " in line for line in status.stdout.splitlines()), status.stdout


@pytest.mark.parametrize("request_, reason", [
    ("hydra.launcher.partition=nope", "Invalid partition name specified"),
    ("hydra.launcher.mem_gb=100000", "Requested node configuration is not available"),
    ("hydra.launcher.gpus_per_node=4 hydra.launcher.partition=gpu", "Requested node configuration is not available"),
])
def test_a_request_the_scheduler_rejects_fails_before_anything_is_written(cluster, tmp_path, request_, reason):
    out = tmp_path / "out"
    run = run_cli(["harness", "-m", "method=distill", *ON_SLURM, *request_.split(), *TINY, f"out_dir={out}"], env=cluster)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and "SLURM rejects" in lines[0], run.stderr
    assert not out.exists()  # no sweep, cell, MLflow store or submission record


def test_a_failing_cell_fails_alone_and_retry_resubmits_only_it(cluster, tmp_path):
    # More DDIM steps than training timesteps: valid-looking, fails at run time in the eraser.
    args = ["harness", "-m", "method=distill,two_stage", *ON_SLURM, "hydra.launcher.wait=true", *TINY,
            "eraser.sampler_steps=5000", f"out_dir={tmp_path}", "tracking.enabled=false"]
    first = run_cli(args, env=cluster)
    assert first.returncode == 1, first.stderr[-2000:]
    distill, two_stage = sweep_cells(tmp_path)
    assert (tmp_path / "cells" / distill / "COMPLETED").exists()
    failed = tmp_path / "cells" / two_stage
    assert (failed / "FAILED").exists() and "Traceback" in (failed / "train.log").read_text()
    assert "FAILED" in first.stderr and two_stage in first.stderr
    assert [s["cells"] for s in submissions(tmp_path)] == [[distill], [two_stage]]  # it waited for the distill array
    job = submissions(tmp_path)[1]["job_ids"][two_stage]
    wait_until(lambda: sacct_states(cluster, job).get(job) == "FAILED", 20, "sacct FAILED")

    retry = jobs_cli(cluster, tmp_path, "retry")
    assert "2 cells, 1 already completed, 0 queued or running, 1 to run" in retry.stdout, retry.stdout + retry.stderr
    assert [s["cells"] for s in submissions(tmp_path)] == [[distill], [two_stage], [two_stage]]
    assert len(attempts(failed)) == 2


def test_status_tail_and_cancel_a_detached_sweep(cluster, tmp_path):
    long = ["finetune.steps=5000", "tracking.enabled=false"]
    run = run_cli(["harness", "-m", "method=distill,bilevel", *ON_SLURM, *TINY, *long, f"out_dir={tmp_path}"], env=cluster)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "submitted 2 cells as SLURM job" in run.stdout and "python -m harness.jobs status" in run.stdout
    distill, bilevel = sweep_cells(tmp_path)
    first, then = submissions(tmp_path)  # bilevel is compared with the distill cell: its array waits for it
    assert (first["cells"], then["cells"]) == ([distill], [bilevel])
    sub = {**first, "job_ids": {**first["job_ids"], **then["job_ids"]}}
    try:
        check_status_tail_cancel(cluster, tmp_path, sub, distill, bilevel)
    finally:  # long jobs: never leave them running
        slurm(cluster, "scancel", *sub["job_ids"].values(), check=False)


def check_status_tail_cancel(cluster, tmp_path, sub, distill, bilevel):
    wait_until(lambda: (tmp_path / "cells" / distill / "metrics.jsonl").exists(), 180, "the distill cell to log a loss")

    status = jobs_cli(cluster, tmp_path, "status")
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[2:]}
    assert "running" in rows[distill] and sub["job_ids"][distill] in rows[distill], status.stdout
    assert re.search(r"finetune \d+ lower \d", rows[distill]), status.stdout  # its latest step and loss

    tail = jobs_cli(cluster, tmp_path, "tail", distill[:6], "-n", "100")
    assert tail.returncode == 0 and f"cell {distill} (distill), attempt 1" in tail.stdout, tail.stdout + tail.stderr

    cancel_one = jobs_cli(cluster, tmp_path, "cancel", distill[:6])
    assert "cancelled 1 job(s)" in cancel_one.stdout, cancel_one.stdout + cancel_one.stderr
    first, second = sub["job_ids"][distill], sub["job_ids"][bilevel]
    state = lambda job: sacct_states(cluster, job.split("_")[0]).get(job)  # noqa: E731
    wait_until(lambda: state(first) == "CANCELLED", 30, "the cell's job cancelled")
    assert state(second) in ("RUNNING", "PENDING")  # afterany: a cancelled reference releases it

    cancel_all = jobs_cli(cluster, tmp_path, "cancel", sub["sweep_id"])
    assert "cancelled 1 job(s)" in cancel_all.stdout, cancel_all.stdout + cancel_all.stderr
    wait_until(lambda: state(first) == state(second) == "CANCELLED", 30, "the sweep cancelled")
    final = jobs_cli(cluster, tmp_path, "status")
    assert "2 cells: 2 cancelled" in final.stdout, final.stdout
    assert not (tmp_path / "cells" / distill / "FAILED").exists()  # cancelled, not failed: retry reruns it


def test_a_crash_between_sbatch_and_recording_the_ids_orphans_nothing(cluster, tmp_path, monkeypatch):
    from harness.app import plan_sweep
    from harness.compose import compose_config
    from harness.launch import records
    from harness.launch.slurm import HarnessSlurmLauncher
    from harness.sweeper import job_config

    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    args = ["method=distill", *ON_SLURM, *TINY, f"out_dir={tmp_path}", "tracking.enabled=false"]
    ((cell, _),) = plan_sweep(args)
    params = compose_config(args, return_hydra_config=True).hydra.launcher
    launcher = HarnessSlurmLauncher(**{k: v for k, v in params.items() if k != "_target_"})

    def killed(self, job_ids):
        raise KeyboardInterrupt("killed after sbatch, before the job ids were recorded")

    with monkeypatch.context() as patch:
        patch.setattr(records.Submission, "submitted", killed)
        with pytest.raises(KeyboardInterrupt):
            launcher.submit_cells([(cell, job_config(cell.cfg, None, tmp_path))], "crash", tmp_path)
    (sub,) = submissions(tmp_path)
    assert sub["state"] == "submitting" and sub["job_ids"] == {}

    again = run_cli(["harness", "-m", *args, "hydra.launcher.wait=true"], env=cluster)
    assert again.returncode == 0, again.stderr[-2000:]
    # the job sbatch made runs meanwhile: still queued or running, or (a fast machine, a tiny
    # cell) already completed when the rerun looks; either way nothing is submitted again
    assert ("1 cells, 0 already completed, 1 queued or running, 0 to run" in again.stdout
            or "1 cells, 1 already completed, 0 queued or running, 0 to run" in again.stdout), again.stdout
    (adopted,) = submissions(tmp_path)  # the job sbatch made was found by its name, not submitted again
    assert adopted["state"] == "submitted" and adopted["job_ids"][cell.id]
    assert (tmp_path / "cells" / cell.id / "COMPLETED").exists()
    named = slurm(cluster, "sacct", "-n", "-X", "-P", "--name", adopted["job_name"], "-o", "JobID")
    assert named.split() == [adopted["job_ids"][cell.id]]


def test_jobs_run_the_code_they_were_submitted_with(cluster, tmp_path):
    from harness.launch.snapshot import source_files

    checkout = tmp_path / "checkout"
    for rel in source_files(REPO):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, checkout / rel)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "submitted"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    out = tmp_path / "out"
    env = {**os.environ, **cluster, "PYTHONPATH": str(checkout)}
    submit = subprocess.run([sys.executable, "-m", "harness", "-m", "method=distill", *ON_SLURM, *TINY, f"out_dir={out}",
                             "tracking.enabled=false", "++hydra.launcher.additional_parameters.hold=true"],
                            cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stderr[-2000:]
    (sub,) = submissions(out)
    # The checkout changes while the job waits: the job must not see it.
    (checkout / "harness" / "runner.py").write_text("raise RuntimeError('edited after submission')\n")
    (cell,) = sweep_cells(out)
    slurm(cluster, "scontrol", "release", sub["job_ids"][cell])
    wait_until(lambda: (out / "cells" / cell / "COMPLETED").exists() or (out / "cells" / cell / "FAILED").exists(), 300, "the cell")
    assert (out / "cells" / cell / "COMPLETED").exists(), (out / "cells" / cell / "train.log").read_text()[-2000:]
    recorded = json.loads((out / "cells" / cell / "environment.json").read_text())["git"]
    assert recorded == {"commit": commit, "dirty": False, "snapshot": sub["code"]["path"]}


def test_the_local_cluster_is_private_and_listens_on_loopback_only(cluster):
    """Its folder is 0700; the munge key, the database password and slurmdbd.conf 0600; every
    daemon's TCP socket on 127.0.0.1; the database's root has no password login over TCP."""
    folder = Path(cluster["SLURM_CONF"]).parent.parent
    assert folder.stat().st_mode & 0o777 == 0o700
    for secret in ("munge/munge.key", "etc/db.secret", "etc/slurmdbd.conf"):
        assert (folder / secret).stat().st_mode & 0o777 == 0o600, secret
    pids = [int(line.split()[1]) for line in (folder / "pids").read_text().splitlines()]
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    ours = [line for line in listening if any(f"pid={pid}," in line for pid in pids)]
    assert len(ours) >= 4, listening  # slurmctld, slurmd, slurmdbd, mariadbd
    assert all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours
    port = next(line.split()[3].split(":")[1] for line in ours if "mariadbd" in line)
    root = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e", "select 1"], capture_output=True, text=True)
    assert root.returncode != 0 and "denied" in root.stderr, root.stderr


def test_the_local_cluster_refuses_a_folder_others_could_have_prepared(tmp_path):
    """A symlink, a folder open to others, a folder of another user: refused before anything
    starts; stop.sh signals no recorded PID that is not one of the cluster's own daemons."""
    start, stop = REPO / "slurm" / "cluster" / "start.sh", REPO / "slurm" / "cluster" / "stop.sh"
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    for folder, why in ((tmp_path / "link", "symbolic link"), (shared, "others can reach it"), (theirs, "belongs to uid 65534")):
        done = subprocess.run([str(start), str(folder)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and why in done.stderr, done.stdout + done.stderr
        assert not (folder / "pids").exists() and not any(target.iterdir())

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    planted = subprocess.Popen(["sleep", "300"])  # a PID recorded under a daemon's name
    try:
        (mine / "pids").write_text(f"slurmctld {planted.pid}\nmunged 1\n")
        done = subprocess.run([str(stop), str(mine)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "left alone" in done.stdout, done.stdout + done.stderr
        assert planted.poll() is None
    finally:
        planted.kill()


def test_a_plan_asks_the_scheduler_for_each_gpu_count(cluster, tmp_path, monkeypatch, capsys):
    """--plan on SLURM: each cell gets the preset's GPUs, or fewer where its batch does not
    split over them (ESD's batch of 1: one), and `sbatch --test-only` is asked for each array;
    a request the cluster cannot meet fails in one line. Nothing is submitted or written."""
    from harness.app import check

    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "o"
    tiny = [a for a in TINY if not a.startswith("eraser.batch_size=")]
    args = ["-m", "method=distill,two_stage", "eraser.batch_size=1", *ON_SLURM, *tiny, f"out_dir={out}", "--plan"]
    with pytest.raises(SystemExit) as exit_info:
        check([*args, "hydra.launcher.gpus_per_node=2"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0, printed
    assert "2 cells: 0 done, 0 queued, 2 to run (SLURM, 2 GPU(s) per cell)" in printed
    assert "sbatch --test-only: SLURM accepts the array of 1 cells (partition=debug, timeout_min=30, gpus_per_node=1)" in printed
    assert "sbatch --test-only: SLURM accepts the array of 1 cells (partition=debug, timeout_min=30, gpus_per_node=2)" in printed
    with pytest.raises(SystemExit) as exit_info:
        check([*args, "hydra.launcher.gpus_per_node=4"])  # the local cluster's node has 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "SLURM rejects the job request" in lines[0] and "gpus_per_node=4" in lines[0]
    # nothing submitted: no job of the cluster's (the other workers' tests share it) runs a script from this test's folder
    commands = slurm(cluster, "squeue", "-h", "-o", "%o").split()
    assert not out.exists() and not [c for c in commands if c.startswith(str(tmp_path))], commands


def test_a_gpu_request_reaches_the_job_which_trains_data_parallel(cluster, tmp_path):
    """gpus_per_node=2 on the gpu partition (the local cluster's fake GPUs): the job gets the two
    GPUs and two tasks, one per GPU, which train the cell data-parallel (gloo: no CUDA here) to
    the result of one local process with the same global batch."""
    from safetensors.torch import load_file

    args = ["method=distill", *TINY, "tracking.enabled=false"]
    env = {**cluster, "OMP_NUM_THREADS": "1"}
    gpus = ["hydra.launcher.wait=true", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"]
    on_slurm = run_cli(["harness", "-m", *args, *ON_SLURM, *gpus, f"out_dir={tmp_path / 'slurm'}"], env=env)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = run_cli(["harness", *args, f"out_dir={tmp_path / 'local'}"], env=env)
    assert local.returncode == 0, local.stderr[-3000:]

    (cell,) = sweep_cells(tmp_path / "slurm")
    (sub,) = submissions(tmp_path / "slurm")
    job = sub["job_ids"][cell]
    tres = slurm(cluster, "sacct", "-n", "-X", "-P", "-j", job, "-o", "AllocTRES")
    assert "gres/gpu=2" in tres, tres
    env_json = json.loads((tmp_path / "slurm" / "cells" / cell / "environment.json").read_text())
    assert env_json["processes"] == 2 and env_json["slurm"]["slurm_ntasks"] == "2"
    assert env_json["slurm"]["cuda_visible_devices"] == "0,1"
    a = load_file(tmp_path / "local" / "cells" / cell / "student.safetensors")
    b = load_file(tmp_path / "slurm" / "cells" / cell / "student.safetensors")
    cfg = compose(args)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < order_of_sums_tolerance((cfg.finetune.lr, cfg.finetune.steps))
