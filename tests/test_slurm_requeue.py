"""A cell on SLURM past its time limit, preempted (submitit's signal) and requeued by a bare
`scontrol requeue`: each resumes from its checkpoint to the uninterrupted result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO, run_cli
from tests.slurm_support import (ON_SLURM, TINY, attempts, cell_metrics, latest_step, needs_root, sacct_states, slurm, submissions, sweep_cells,
                                 wait_until)

pytestmark = needs_root


SIGNAL_AFTER_S = 60  # the time-limited job's warning: 2-min limit, 60 s delay (it came 47 s after start, checked every 30 s)


def steps_outlasting(seconds: float, env: dict, tmp_path) -> int:
    """Fine-tuning steps that take longer than `seconds` on this machine, by construction: the
    step time is measured here (one thread, alone: the jobs share the cores, so they only go
    slower), and the count has a 1.5× margin. A fixed count made a fast CPU finish before
    its time limit."""
    probe = run_cli(["harness", "method=distill", *TINY, "finetune.steps=20", "eval.backbone=none", "tracking.enabled=false",
                     f"out_dir={tmp_path / 'probe'}"], env=env)
    assert probe.returncode == 0, probe.stderr[-2000:]
    (cell,) = (tmp_path / "probe" / "cells").iterdir()
    per_step = json.loads((cell / "results.json").read_text())["timings"]["finetune"]["seconds_per_step"]
    return max(200, math.ceil(1.5 * seconds / per_step))


def lift_the_limit_after_one_timeout(cluster, out, job):
    """Once the time-limited job has timed out and restarted, give it the time it needs: one
    timeout and requeue is what the test is about, and every further one costs a restart."""
    (cell,) = sweep_cells(out)
    # Its warning comes 30-60 s after it starts (slurmctld checks limits every 30 s), on 2 busy
    # cores often while the job still imports torch (harness/launch/requeue.py says why that
    # once failed the job); then the requeued job waits out a BeginTime before it is eligible
    # again. Waiting costs nothing when the restart comes sooner.
    try:
        wait_until(lambda: len(attempts(out / "cells" / cell)) >= 2, 900, "the time-limited job to restart")
    except AssertionError as exc:  # say where the job is (pending and why, running, or ended how) and what it said
        state = slurm(cluster, "scontrol", "show", "job", job, check=False) or f"gone from slurmctld; sacct: {sacct_states(cluster, job)}"
        said = "".join(p.read_text()[-1500:] for p in sorted((out / "slurm").glob("*/*_log.err")))
        raise AssertionError(f"{exc}; attempts: {attempts(out / 'cells' / cell)}; the job now: {state}; its log: {said}") from None
    slurm(cluster, "scontrol", "update", f"JobId={job}", "TimeLimit=30")


def test_time_limit_preemption_and_bare_requeue_resume_to_the_same_result(cluster, tmp_path):
    """Three runs of one cell: uninterrupted (here), on SLURM past a 2-minute time limit, and
    on SLURM preempted (submitit's signal) then requeued by a bare `scontrol requeue`."""
    # One thread per process: the three runs share 2 cores, and do the same arithmetic.
    env = {**cluster, "OMP_NUM_THREADS": "1"}
    steps = steps_outlasting(SIGNAL_AFTER_S, env, tmp_path)
    cell_args = ["method=distill", *TINY, f"finetune.steps={steps}", "runtime.checkpoint_every=20", "tracking.enabled=false"]
    limited, preempted, local = tmp_path / "limited", tmp_path / "preempted", tmp_path / "local"
    # Each signal under a 2-minute limit counts as a timeout (submitit); after the first, the
    # limit is lifted (lift_the_limit_after_one_timeout), but allow requeues for a slow restart.
    limit = ["hydra.launcher.timeout_min=2", f"hydra.launcher.signal_delay_s={120 - SIGNAL_AFTER_S}", "hydra.launcher.max_num_timeout=20"]
    for out, extra in ((limited, limit), (preempted, [])):
        run = run_cli(["harness", "-m", *cell_args, *ON_SLURM, *extra, f"out_dir={out}"], env=env)
        assert run.returncode == 0, run.stderr[-2000:]
    limited_job = submissions(limited)[0]["job_ids"][sweep_cells(limited)[0]]
    watcher = ThreadPoolExecutor(1)
    lifted = watcher.submit(lift_the_limit_after_one_timeout, cluster, limited, limited_job)
    reference = subprocess.Popen([sys.executable, "-m", "harness", *cell_args, f"out_dir={local}"], cwd=REPO,
                                 env={**os.environ, **env, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    (cell,) = sweep_cells(preempted)
    folder = preempted / "cells" / cell
    job = submissions(preempted)[0]["job_ids"][cell]

    # preemption as submitit sees it: SIGTERM, then the USR2 warning
    at = wait_until(lambda: latest_step(folder) >= 60 and latest_step(folder), 300, "60 steps before preemption")
    slurm(cluster, "scancel", "--signal=TERM", job)
    slurm(cluster, "scancel", "--signal=USR2", job)
    wait_until(lambda: len(attempts(folder)) == 2, 120, "the preempted job to restart")
    assert attempts(folder)[0]["ended"] == "requeued"
    # a bare requeue: the job is killed and restarts from its original submission
    wait_until(lambda: latest_step(folder) >= at + 60, 300, "progress after the first resume")
    slurm(cluster, "scontrol", "requeue", job)
    wait_until(lambda: len(attempts(folder)) == 3, 120, "the requeued job to restart")
    assert "ended" not in attempts(folder)[1]  # killed outright, no chance to say anything

    lifted.result(timeout=900)  # (its own failure, raised here)
    watcher.shutdown()
    for out in (preempted, limited):
        wait_until(lambda out=out: (out / "cells" / cell / "COMPLETED").exists() or (out / "cells" / cell / "FAILED").exists(),
                   600, f"{out.name} to finish", every=2)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]

    log = (preempted / "cells" / cell / "train.log").read_text()
    assert log.count("resumed stage finetune from step_") == 2, log
    limited_attempts = attempts(limited / "cells" / cell)
    assert len(limited_attempts) >= 2 and limited_attempts[0]["ended"] == "requeued", limited_attempts
    assert "timed-out" in "".join(p.read_text() for p in (limited / "slurm").glob("*/*_log.err"))

    from safetensors.torch import load_file

    want = load_file(local / "cells" / cell / "student.safetensors")
    for out in (preempted, limited):
        got = load_file(out / "cells" / cell / "student.safetensors")
        assert got.keys() == want.keys()
        worst = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
        assert worst <= 1e-6, f"{out.name}: weights differ by {worst}"
        assert cell_metrics(out)[cell] == pytest.approx(cell_metrics(local)[cell], rel=1e-5, abs=1e-6), out.name
