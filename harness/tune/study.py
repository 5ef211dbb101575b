"""The study: its identity, storage and sampler, and the janitor for trials of dead workers.

Identity: a hash of the fixed config (the sections a cell depends on, with the space's keys
left out) and of the `tune` block's space, objectives, constraints, sampler and seed. The
same command resumes its study; a changed space or objective is a new one.

Storage: a journal file (<out_dir>/optuna/<study>.log, O_CREAT|O_EXCL lock: fine on NFS, no
fcntl) unless `tune.storage` names a database. A journal has no heartbeat, so the janitor
(at every worker start) fails each RUNNING trial whose worker is gone and enqueues its
parameters again; otherwise the constant-liar sampler would count it as running forever."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.tune.spec import TuneSpec

CELL_SECTIONS = ("seed", "model", "data", "concepts", "pruning", "train", "finetune", "method", "eraser", "eval")


def study_name(cfg: DictConfig, spec: TuneSpec) -> str:
    fixed = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k] for k in CELL_SECTIONS}
    for p in spec.space:  # the searched keys are not part of what stays fixed
        section, _, rest = p.key.partition(".")
        node = fixed.get(section)
        parts = rest.split(".")
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    blob = json.dumps({"fixed": fixed, "tune": spec.identity()}, sort_keys=True, default=str)
    return f"{cfg.get('sweep_name') or 'tune'}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def storage_for(spec: TuneSpec, folder: Path):
    if spec.storage:
        return spec.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / "journal.log")
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def sampler_for(spec: TuneSpec, worker: int):
    import optuna

    seed = spec.seed * 1000 + worker  # workers must not propose the same points
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)  # Optuna 5: multivariate, constant liar


def pruner_for(spec: TuneSpec, steps: list[int]):
    """`tune.pruner`, judging trials at the probe steps (eval.recovery_steps)."""
    import optuna

    if spec.pruner == "median":  # stop a trial below the median of earlier trials at the same step
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, spec.workers), n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(steps), max_resource=max(steps), reduction_factor=2)
    return optuna.pruners.NopPruner()


def open_study(name: str, spec: TuneSpec, folder: Path, worker: int = 0, probe_steps: list[int] | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage_for(spec, folder), sampler=sampler_for(spec, worker),
                               pruner=pruner_for(spec, probe_steps or [1]), directions=spec.directions, load_if_exists=True)


# -- workers --------------------------------------------------------------------------------
def worker_identity(index: int) -> dict:
    """Who runs a trial: a SLURM job (its id survives a requeue) or a local process."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if job:
        return {"worker": f"slurm-{job}", "slurm_job": job}
    return {"worker": f"local-{socket.gethostname()}-{os.getpid()}", "host": socket.gethostname(), "pid": os.getpid(), "index": index}


def worker_alive(attrs: dict) -> bool:
    if attrs.get("slurm_job"):
        from harness.launch import records

        state = records.job_states([attrs["slurm_job"]]).get(attrs["slurm_job"])
        return state is None or state in ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
    if attrs.get("host") != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(attrs["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_workers(study, me: str) -> list[int]:
    """Fail the RUNNING trials of workers that are gone and enqueue their parameters again.
    Returns the failed trial numbers."""
    import optuna

    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("worker") == me or worker_alive(attrs):
            continue
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


def status(folder: Path) -> str:
    """A study as `python -m harness.jobs study` shows it: trials per state, the workers of its
    running trials (alive or gone: the janitor fails the trials of gone ones first), the front."""
    import optuna

    from harness.tune.spec import parse

    info = json.loads((folder / "study.json").read_text())
    from harness.compose import compose_config

    spec = parse(compose_config(info["arguments"]))
    study = open_study(info["name"], spec, folder)
    swept = sweep_dead_workers(study, me="")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    lines = [f"study {info['name']} ({folder}): budget {spec.trials} trials, {spec.workers} workers",
             "trials: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)]
    if swept:
        lines.append(f"trials {swept}: their workers are gone: marked fail, parameters queued again")
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in running:
        lines.append(f"  running trial {t.number} on {t.user_attrs.get('worker')} (cell {t.user_attrs.get('cell', '-')})")
    names = [m for m, _ in spec.objectives]
    front = study.best_trials if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials) else []
    lines.append(f"front ({', '.join(f'{m} {d}' for m, d in spec.objectives)}): {len(front)} trial(s)")
    for t in sorted(front, key=lambda t: t.values):
        values = ", ".join(f"{m}={v:.4g}" for m, v in zip(names, t.values))
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"  trial {t.number} (cell {t.user_attrs.get('cell')}): {values} at {params}")
    return "\n".join(lines)
