"""One tuning worker: ask a trial, run its cell, tell the result; until the budget is spent.

    python -m harness.tune.worker <study folder> <worker index>

Each trial is a cell like any other (same identity, same folder, same MLflow child run, tagged
`optuna.study` and `optuna.trial`): a trial whose parameters make a cell that is already
COMPLETED is told its stored metrics without training, and the per-cell lock keeps two
workers from training one cell. A worker requeued by SLURM finds the trial it was running
(its job id is on the trial) and finishes that one first."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from harness.errors import CellStopped, ConfigError, MissingInputError

log = logging.getLogger("harness")


def objective_values(metrics: dict, cfg) -> dict:
    """A cell's metrics plus the aggregates the tune block may name."""
    metrics = dict(metrics)
    for which, names in (("erased", cfg.concepts.erase), ("retained", cfg.concepts.retain)):
        values = [metrics[f"presence/{n}"] for n in names if f"presence/{n}" in metrics]
        if values:
            metrics[f"presence/{which}"] = sum(values) / len(values)
    return metrics


class PruningObserver:
    """Reports a single-objective trial's value at each probe step (eval.recovery_steps) and
    stops its cell when the study's pruner says so (the trial ends PRUNED)."""

    def __init__(self, trial, metric: str, cfg):
        self.trial, self.metric, self.cfg = trial, metric, cfg
        self.metrics = [metric]

    def __call__(self, step: int, values: dict) -> None:
        value = objective_values(values, self.cfg)[self.metric]
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise CellStopped(f"trial {self.trial.number} pruned at step {step}: {self.metric} {value:.4g}")


class BudgetLock:
    """Exclusive between workers while they count trials and ask for one (a lock file made
    with O_CREAT|O_EXCL, as the journal's own: no fcntl needed on NFS)."""

    def __init__(self, folder: Path):
        from optuna.storages.journal import JournalFileOpenLock

        self._lock = JournalFileOpenLock(str(folder / "budget"))

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False


def _tag_run(cfg, cell, study: str, number: int) -> None:
    from harness.tracking import Tracker

    state = cell.path("tracking.json")
    if state.exists() and (run_id := json.loads(state.read_text()).get("run_id")):
        Tracker(cfg).set_tags(run_id, {"optuna.study": study, "optuna.trial": number})


def next_trial(study, spec, me: dict, folder: Path):
    """This worker's own unfinished trial (after a requeue), else a new one if the budget
    allows (trials that completed, were pruned or are running count against it)."""
    from optuna.trial import TrialState

    from harness.internals import running_trial

    with BudgetLock(folder):
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == me["worker"]]
        if mine:
            return running_trial(study, mine[0])
        spent = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
        if spent >= spec.trials:
            return None
        trial = study.ask()
        for key, value in me.items():
            trial.set_user_attr(key, value)
        return trial


def trial_config(arguments: list[str], overrides: list[str]):
    """A trial's cell config: the study's command line with the trial's values, validated,
    without the `tune` block (a cell is a cell: the reference cells it needs, such as the
    distilled student for CSD, are validated as what they are, not as members of the study)."""
    from omegaconf import open_dict

    from harness.compose import compose_config
    from harness.validate import validate

    cfg = compose_config([*arguments, *overrides])
    validate(cfg)
    with open_dict(cfg):
        cfg.tune = None
    return cfg


def run(folder: Path, index: int) -> int:
    import optuna

    from harness.compose import compose_config
    from harness.logs import setup_logging
    from harness.cell import Cell
    from harness.runner import run_cell
    from harness.tune.spec import parse
    from harness.tune.study import open_study, sweep_dead_workers, worker_identity

    setup_logging()
    info = json.loads((folder / "study.json").read_text())
    base = compose_config(info["arguments"])
    spec = parse(base)
    study = open_study(info["name"], spec, folder, index, list(base.eval.recovery_steps or []))
    me = worker_identity(index)
    if failed := sweep_dead_workers(study, me["worker"]):
        log.info("tune %s: trials %s of workers that are gone marked FAIL and queued again", info["name"], failed)
    told = 0
    while (trial := next_trial(study, spec, me, folder)) is not None:
        params = {p.key: p.suggest(trial) for p in spec.space}
        overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in params.items()]
        try:
            cfg = trial_config(info["arguments"], overrides)
        except (ConfigError, MissingInputError) as exc:
            log.warning("tune %s: trial %d: %s", info["name"], trial.number, exc)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        cell = Cell(cfg)
        trial.set_user_attr("cell", cell.id)
        log.info("tune %s: trial %d (%s) is cell %s", info["name"], trial.number, ", ".join(overrides), cell.id)
        observer = PruningObserver(trial, spec.objectives[0][0], cfg) if spec.pruner else None
        try:
            results = run_cell(cfg, observer=observer)
        except CellStopped as exc:
            log.info("tune %s: %s", info["name"], exc)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        except Exception as exc:  # the cell's FAILED marker and log say why; the study goes on
            log.warning("tune %s: trial %d failed: %s", info["name"], trial.number, exc)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        _tag_run(cfg, cell, info["name"], trial.number)
        metrics = objective_values(results["metrics"], cfg)
        for c in spec.constraints:
            trial.set_constraint(str(c), c.value(metrics))
        study.tell(trial, [metrics[m] for m, _ in spec.objectives])
        told += 1
    log.info("tune %s: worker %s done (%d trials told)", info["name"], me["worker"], told)
    return 0


def end_with_parent(parent: int) -> bool:
    """A local worker gets SIGTERM when the tuning command that started it dies, however it
    dies (a SIGKILL, a timeout that kills only the command): no orphan keeps training into the
    study. The trial's cell keeps its last checkpoint, and the next run's janitor marks the
    trial failed and queues its parameters again. False: that command is already gone."""
    import ctypes
    import os
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the worker outlives its command, as a SLURM worker does
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    import os

    if len(argv) != 2:
        print("usage: python -m harness.tune.worker <study folder> <worker index>", file=sys.stderr)
        return 2
    parent = os.environ.get("HARNESS_TUNE_PARENT")
    if parent and not end_with_parent(int(parent)):
        print("harness.tune.worker: the tuning command that started it has ended", file=sys.stderr)
        return 1
    return run(Path(argv[0]), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
