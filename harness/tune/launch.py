"""`python -m harness -m sweep=tune_*`: the study's folder, its first trial (the sweep's own
settings), an MLflow parent run, and `tune.workers` worker processes; then a summary.

Running the same command again resumes the study: its name is its identity (study.py), the
journal holds every trial told so far, and the workers only ask for what the budget lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from harness.files import write_atomic


def hand_picked(spec, cfg: DictConfig) -> dict | None:
    """The sweep's own setting of every searched key (None where one lies outside the space)."""
    from omegaconf import OmegaConf

    params = {}
    for p in spec.space:
        value = OmegaConf.select(cfg, p.key)
        inside = value in p.choices if p.kind == "choice" else (p.low <= value <= p.high if value is not None else False)
        if not inside:
            return None
        params[p.key] = value
    return params


def enqueue_defaults(study, params: dict | None) -> None:
    """The hand-picked point as a trial, measured like any other: queued first, and again
    on a rerun when no trial of it is waiting, running or has ended well (a failed one is
    retried)."""
    from optuna.trial import TrialState

    if params is None:
        return
    alive = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=alive):
        if t.system_attrs.get("fixed_params", t.params) == params:
            return
    study.enqueue_trial(params)


def run_tuning(cfg: DictConfig, arguments: list[str], slurm=None) -> dict:
    """Start the study's workers: local processes, or with a SLURM launcher one job array
    (then return at once unless the launcher waits, like a SLURM sweep)."""
    import optuna

    from harness.tracking import SWEEP_TAG, Tracker
    from harness.tune.spec import parse
    from harness.tune.study import open_study, study_name

    spec = parse(cfg)
    name = study_name(cfg, spec)
    out_dir = Path(cfg.out_dir).resolve()
    folder = out_dir / "optuna" / name
    folder.mkdir(parents=True, exist_ok=True)
    study = open_study(name, spec, folder)
    defaults = hand_picked(spec, cfg)
    enqueue_defaults(study, defaults)
    tracker = Tracker(cfg)
    parent = tracker.get_or_create_run(SWEEP_TAG, name, name, {"harness.sweep": cfg.get("sweep_name"), "optuna.study": name,
                                                               "optuna.trials": spec.trials})
    args = [a for a in arguments if not a.startswith("out_dir=")] + [f"out_dir={out_dir}"]
    if parent:
        args.append(f"tracking.parent_run_id={parent}")
    write_atomic(folder / "study.json", json.dumps({"name": name, "arguments": args, "spec": spec.identity(), "hand_picked": defaults,
                                                    "trials": spec.trials, "workers": spec.workers}, indent=1))
    print(f"tune {name}: {spec.trials} trials, {spec.workers} workers, {len(spec.objectives)} objective(s); study in {folder}", flush=True)
    if slurm is not None:
        from harness.launch import records

        slurm.test_only(spec.workers)
        jobs = slurm.submit_workers(folder, spec.workers, out_dir, bool(cfg.runtime.reproducible))
        print(f"tune {name}: {spec.workers} workers submitted as SLURM job {jobs[0].split('_')[0]}", flush=True)
        if not slurm.wait:
            print(f"tune {name}: the study is {folder}; run the same command again to add workers or resume", flush=True)
            return {"study": name, "jobs": jobs}
        while any(records.job_states(jobs).get(j) not in records.TERMINAL for j in jobs):
            time.sleep(3)
        states = records.job_states(jobs)
        codes = [0 if states.get(j) == "COMPLETED" else 1 for j in jobs]
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
        if not cfg.runtime.threads and spec.workers > 1:
            # the workers share this machine's cores: each takes its part (torch's default would
            # give every worker all of them, and OpenMP threads spinning against each other cost
            # far more than the split)
            share = str(max(1, (os.cpu_count() or 1) // spec.workers))
            env.update(OMP_NUM_THREADS=share, MKL_NUM_THREADS=share)
        env["HARNESS_TUNE_PARENT"] = str(os.getpid())  # a worker ends with this command (worker.end_with_parent)
        workers = [subprocess.Popen([sys.executable, "-m", "harness.tune.worker", str(folder), str(i)], env=env) for i in range(spec.workers)]
        codes = [w.wait() for w in workers]
    study = open_study(name, spec, folder)
    states = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    front = [{"trial": t.number, "values": t.values, "params": t.params, "cell": t.user_attrs.get("cell")} for t in study.best_trials]
    summary = {"study": name, "states": {k: v for k, v in states.items() if v}, "front": front, "workers_exit": codes}
    write_atomic(folder / "summary.json", json.dumps(summary, indent=1, default=str))
    if parent:
        tracker.log_artifact(parent, folder / "summary.json")
        tracker.log_metrics(parent, [{"time": time.time(), "step": 0,
                                      "values": {f"trials_{k.lower()}": v for k, v in states.items()}}])
        tracker.terminate(parent, "FINISHED" if not any(codes) else "FAILED")
    print(f"tune {name}: " + ", ".join(f"{v} {k.lower()}" for k, v in summary["states"].items()) + f"; front: {len(front)} trial(s)", flush=True)
    for point in front:
        print(f"  trial {point['trial']} (cell {point['cell']}): {dict(zip([m for m, _ in spec.objectives], point['values']))} at {point['params']}", flush=True)
    if any(codes):
        sys.exit(1)
    return summary
