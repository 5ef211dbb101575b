"""Tuning studies on SLURM: the workers as one job array on one journal, and a worker requeued
mid-trial that finishes its own trial."""

from __future__ import annotations

import re

from tests.conftest import run_cli
from tests.slurm_support import ON_SLURM, needs_root, sacct_states, slurm, wait_until

pytestmark = needs_root


def test_a_tuning_study_runs_its_workers_as_a_job_array(cluster, tmp_path):
    """`launcher=slurm_local` with a tune sweep: two workers, one SLURM array, one journal;
    the budget spent exactly, every trial told by a SLURM worker."""
    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study, study_name
    from tests.test_tune import TINY_STUDY

    out = tmp_path / "out"
    args = [*TINY_STUDY, "tune.trials=4", f"out_dir={out}"]
    env = {**cluster, "OMP_NUM_THREADS": "1"}
    done = run_cli(["harness", *args, *ON_SLURM, "hydra.launcher.wait=true"], env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = compose_config([a for a in args if a != "-m"])
    spec = parse(cfg)
    name = study_name(cfg, spec)
    trials = open_study(name, spec, out / "optuna" / name).trials
    assert [t.state for t in trials].count(optuna.trial.TrialState.COMPLETE) == 4 and len(trials) == 4
    assert all(t.user_attrs["worker"].startswith("slurm-") for t in trials)


def test_a_requeued_tuning_worker_finishes_its_own_trial(cluster, tmp_path):
    """A bare `scontrol requeue` of a worker mid-trial: the job restarts, the worker finds the
    trial it was running (its job id is on it), resumes that cell from its checkpoint and tells
    it; the study ends with the budget, no trial failed."""
    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study, study_name
    from tests.test_tune import TINY_STUDY

    out = tmp_path / "out"
    args = [*TINY_STUDY, "tune.trials=3", "finetune.steps=300", "runtime.checkpoint_every=10", f"out_dir={out}"]
    env = {**cluster, "OMP_NUM_THREADS": "1"}
    done = run_cli(["harness", *args, *ON_SLURM], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    array = re.search(r"submitted as SLURM job (\d+)", done.stdout).group(1)
    cfg = compose_config([a for a in args if a != "-m"])
    spec = parse(cfg)
    name = study_name(cfg, spec)
    folder = out / "optuna" / name

    def trial_in_training():
        if not (folder / "journal.log").exists():
            return None
        for t in open_study(name, spec, folder).trials:
            if t.state == optuna.trial.TrialState.RUNNING and "cell" in t.user_attrs \
                    and list((out / "cells" / t.user_attrs["cell"]).glob("checkpoints/*/step_*.pt")):
                return t
        return None

    target = wait_until(trial_in_training, 300, "a trial in training")
    slurm(cluster, "scontrol", "requeue", target.user_attrs["slurm_job"])
    wait_until(lambda: (states := sacct_states(cluster, array)) and len(states) == 2
               and all(s == "COMPLETED" for s in states.values()), 600, "both workers to end")
    trials = open_study(name, spec, folder).trials
    assert [t.state for t in trials].count(optuna.trial.TrialState.COMPLETE) == 3 and len(trials) == 3, [t.state for t in trials]
    again = trials[target.number]
    assert again.state == optuna.trial.TrialState.COMPLETE and again.user_attrs["worker"] == target.user_attrs["worker"]
    assert "resumed stage" in (out / "cells" / target.user_attrs["cell"] / "train.log").read_text()
