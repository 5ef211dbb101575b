"""Run one cell: a function of its config that returns its metrics.

Completed cells return their stored results without training. Interrupted cells resume from
their latest checkpoint. A failing cell writes its traceback to its log and a FAILED marker,
then re-raises."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone

import torch
from omegaconf import DictConfig, OmegaConf

from harness import distributed, numerics
from harness.cell import Cell, cell_id, write_atomic
from harness.context import build_context, pick_device
from harness.costs import CostMeter
from harness.env import environment
from harness.evaluation import evaluate, probe, recovery
from harness.method import get_method
from harness.pruning import save_pruned
from harness.tracker_process import open_tracker
from harness.tracking import CellRun, Tracker
from harness.trainer import Trainer, TrainConfig
from harness.errors import CellStopped, ConfigError
from harness.launch import requeue
from harness.validate import validate

log = logging.getLogger("harness")

@contextmanager
def cell_log(cell: Cell):
    """Send the harness log to the cell's train.log while the cell runs."""
    handler = logging.FileHandler(cell.path("train.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("harness")
    level = logger.level
    logger.setLevel(logging.INFO)  # the cell's log is complete whatever the console shows
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run_cell(cfg: DictConfig, tracker: Tracker | None = None, observer=None, validated: bool = False) -> dict:
    """Train and evaluate the cell for `cfg` (or return its stored results).

    `observer(step, metrics)`, if given, sees the student measured at each of
    `eval.recovery_steps` as training reaches it (evaluation.probe: `observer.metrics` names
    what to measure) and may stop the cell by raising CellStopped (a tuning trial pruned):
    the attempt ends `stopped`, its checkpoints kept, neither failed nor completed.
    `validated`: the caller validated this very config (a sweep's cells, planned before launch);
    a cell started any other way (a SLURM job, a tuning trial, the API) is validated here."""
    if not validated:
        validate(cfg)
    numerics.apply(cfg.runtime)
    if why := numerics.check(cfg.runtime.reproducible):
        raise ConfigError("runtime.reproducible", True, why)
    cell = Cell(cfg)
    if not distributed.world().main:
        # another rank of a data-parallel cell: train alongside rank 0 when it does, write nothing
        if distributed.decide(None):
            _train_and_evaluate(cfg, cell, None, None)
            distributed.barrier()  # until rank 0 has evaluated and completed the cell
        return None
    if cell.done:
        distributed.decide(False)
        return add_robustness(cfg, cell, tracker)
    tracker = tracker or open_tracker(cfg)
    with cell.lock():
        if cell.done:  # finished by another process while we waited
            distributed.decide(False)
            return cell.results()
        distributed.decide(True)
        results = _run_locked(cfg, cell, tracker, observer)
    distributed.barrier()  # the other ranks may now read the finished cell (e.g. its student)
    return results


def add_robustness(cfg: DictConfig, cell: Cell, tracker: Tracker | None = None) -> dict:
    """A completed cell's results, with the robustness probes (harness/robustness) added when
    they are asked for and its results lack them (or hold them at another budget): run on its
    saved student, without training, then logged to its MLflow run. The probes never make a
    new cell: turning them on for a finished sweep probes its cells."""
    from harness import robustness

    results = cell.results()
    if not robustness.wanted(cfg) or (results.get("robustness") or {}).get("budget") == robustness.budget(cfg):
        return results
    with cell.lock(), cell_log(cell):
        results = cell.results()
        if (results.get("robustness") or {}).get("budget") == robustness.budget(cfg):
            return results  # probed by another process while we waited
        log.info("cell %s: robustness probes on its finished student", cell.id)
        numerics.apply(cfg.runtime)
        torch.manual_seed(cfg.seed)
        ctx = build_context(cfg, cell.dir, lambda dep: Cell(dep).dir)  # no training: references are done
        ctx.load_student(cell.dir)
        from harness.evaluation import metric_backbones

        t0 = time.perf_counter()
        metrics, info = robustness.probe(ctx, ctx.student, metric_backbones(cfg.eval, ctx.device))
        kept = {k: v for k, v in results["metrics"].items() if not robustness.is_robustness_metric(k)}
        # MLflow keeps a metric's last value and cannot delete one: a key the earlier probes
        # measured and these do not (the floor or the neighbours turned off) is logged as NaN,
        # which the records read as absent (analysis/records.py), so no table shows it beside
        # values of another budget
        cleared = {k: math.nan for k in results["metrics"] if robustness.is_robustness_metric(k) and k not in metrics}
        results["metrics"] = {**kept, **metrics}
        results["metric_info"] = {**results.get("metric_info", {}), **info}
        results["robustness"] = {"budget": robustness.budget(cfg), "seconds": time.perf_counter() - t0, "added_at": _now()}
        write_atomic(cell.path("results.json"), json.dumps(results, indent=1, default=str))
        cell.append_metrics({"time": time.time(), "stage": "robustness", "step": 0, "values": {**metrics, **cleared}})
        tracker = tracker or open_tracker(cfg)
        run = CellRun(tracker, cell, cfg.tracking.get("parent_run_id"), cfg.tracking.flush_every_s)
        if run_id := run.state.get("run_id"):  # a tracker that is down: backfill sends the line later
            run.flush(force=True, final=True)
            for name in ("results.json", "robustness.json", "robustness.png"):
                tracker.log_artifact(run_id, cell.path(name))
            run.log_concept_samples(run_id)  # the attacked prompts' images, for the sample grids
    return results


def _run_locked(cfg: DictConfig, cell: Cell, tracker: Tracker, observer=None) -> dict:
    cell.write_config()
    env_path = cell.path("environment.json")
    env = environment(pick_device(cfg.runtime.device).type)
    attempts = json.loads(env_path.read_text()).get("attempts", []) if env_path.exists() else []
    attempts.append({"started_at": _now(), "host": env["host"], "slurm": env["slurm"]})
    write_atomic(env_path, json.dumps({**env, "attempts": attempts}, indent=1))
    with cell_log(cell):
        log.info("cell %s (%s), attempt %d, in %s", cell.id, cfg.method.name, len(attempts), cell.dir)
        if dropped := cell.drop_undurable_metrics():
            log.info("%d metric lines logged after the latest checkpoint dropped: the resumed cell logs them again", dropped)
        run = CellRun(tracker, cell, cfg.tracking.get("parent_run_id"), cfg.tracking.flush_every_s)
        run.start(env)
        try:
            results = _train_and_evaluate(cfg, cell, run, tracker, observer)
        except CellStopped as exc:
            log.info("cell %s stopped at its observer's request (%s); resumes from its latest checkpoint if run again", cell.id, exc)
            _end_attempt(env_path, "stopped")
            run.finish(None, status="KILLED")
            raise
        except BaseException as exc:  # KeyboardInterrupt/SystemExit too: the marker says why
            if _ending_in_requeue(exc):
                log.info("cell %s interrupted by the scheduler: requeued; resumes from its latest checkpoint", cell.id)
                _end_attempt(env_path, "requeued")
                run.finish(None, status="KILLED")
                raise
            cell.mark_failed(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
            log.error("cell %s failed:\n%s", cell.id, traceback.format_exc())
            _end_attempt(env_path, "failed")
            run.finish(None, status="FAILED")
            raise
    _end_attempt(env_path, "completed")
    cell.mark_completed(results)
    run.finish(results)
    return results


def _train_and_evaluate(cfg: DictConfig, cell: Cell, run: CellRun, tracker: Tracker, observer=None) -> dict:
    with CostMeter(pick_device(cfg.runtime.device)) as meter:
        results = _train_and_evaluate_measured(cfg, cell, run, tracker, observer)
    if results is not None:
        results["cost"] = meter.figures()
    return results


def _train_and_evaluate_measured(cfg: DictConfig, cell: Cell, run: CellRun, tracker: Tracker, observer=None) -> dict:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    main = run is not None  # rank 0 of a data-parallel cell, or the only process

    def require_cell(dep_cfg: DictConfig):
        dep = Cell(dep_cfg)
        log.info("cell %s needs cell %s (%s)", cell.id, dep.id, dep_cfg.method.name)
        run_cell(dep_cfg, tracker)
        return dep.dir

    method_cls = get_method(cfg.method.name)
    reference = method_cls.reference(cfg)
    if reference is not None and (method_cls.continues_reference or cfg.eval.backbone != "none"):
        # the cell this one starts from, or whose images its image metrics compare with,
        # finished before this one starts: training and evaluation then only read it
        require_cell(reference)
    # seeded after the reference: a cell computes the same whether its reference ran in this
    # process just now or was finished before
    torch.manual_seed(cfg.seed)
    ctx = build_context(cfg, cell.dir, require_cell)

    def on_log(stage: str, step: int, values: dict) -> None:
        values = {f"{stage}/{k}": v for k, v in values.items()}  # e.g. bilevel/upper/loss
        cell.append_metrics({"time": time.time(), "stage": stage, "step": step, "values": values})
        run.flush()

    def on_checkpoint(stage: str, step: int) -> None:
        run.checkpointed()
        if observer is not None and step in cfg.eval.recovery_steps:
            values = probe(ctx, ctx.student, observer.metrics, step)
            log.info("probe at %s step %d: %s", stage, step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
            observer(step, values)  # may raise CellStopped

    rt = cfg.runtime
    trainer = Trainer(
        TrainConfig(
            seed=cfg.seed,
            grad_accum=cfg.train.grad_accum,
            max_grad_norm=cfg.train.max_grad_norm,
            precision=cfg.train.precision,
            checkpoint_every=rt.checkpoint_every,
            keep_checkpoints=rt.keep_checkpoints,
            keep_steps=tuple(cfg.eval.recovery_steps),
            log_every=rt.log_every,
            progress=rt.progress,
        ),
        ctx.device,
        on_log,
        on_checkpoint,
    )
    method = get_method(cfg.method.name)(ctx)
    timings, last_stage = {}, None
    for stage in method.stages():
        timings[stage.name] = trainer.fit(stage, cell.path("checkpoints") / stage.name)
        last_stage = stage
    if not main:
        return None  # rank 0 evaluates
    if get_method(cfg.method.name).prunes:  # (the teacher cell's student is the teacher's file)
        save_pruned(ctx.student, ctx.prune_report, cell.path("student"))
    t_eval, cpu_eval = time.perf_counter(), time.process_time()
    with distributed.alone():  # the other ranks wait at the cell's final barrier
        metrics, metric_info = evaluate(ctx, ctx.student)
        cell.append_metrics({"time": time.time(), "stage": "eval", "step": 0, "values": metrics})
        if cfg.eval.recovery_steps and last_stage is not None:
            # quality along training, from the checkpoints kept at those steps (logged per step)
            for step, values in recovery(ctx, last_stage, cell.path("checkpoints") / last_stage.name, cfg.eval.recovery_steps):
                cell.append_metrics({"time": time.time(), "stage": "recovery", "step": step, "values": values})
    return {
        "cell_id": cell.id,
        "method": cfg.method.name,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "metrics": metrics,
        "metric_info": metric_info,
        "pruning": {k: v for k, v in vars(ctx.prune_report).items() if k != "kept_channels"},
        # the cell this one starts from or is compared with: its method's `reference` (stage 1 cost, CSD reference)
        "depends_on": cell_id(reference) if reference is not None else None,
        "timings": {**timings, "eval_seconds": time.perf_counter() - t_eval, "total_seconds": time.perf_counter() - t_start,
                    "eval_cpu_seconds": time.process_time() - cpu_eval, "total_cpu_seconds": time.process_time() - cpu_start},
        "finished_at": _now(),
        # the robustness probes' budget, when they ran (a rerun at another budget probes again)
        **({"robustness": {k: metric_info["robustness"][k] for k in ("budget", "seconds")}} if "robustness" in metric_info else {}),
        # what decides the numbers beyond the config (harness/numerics.py): tables never
        # average cells of different kernel sets silently
        "kernel_set": numerics.kernel_set(numerics.describe(), ctx.device.type),
    }


def _ending_in_requeue(exc: BaseException) -> bool:
    """Whether `exc` ends this attempt because the scheduler requeues the job. After the
    checkpoint hook, submitit runs `scontrol requeue` and exits (SystemExit). But the requeue
    kills the job's processes, and SLURM's SIGTERM can reach that `scontrol` child before it
    returns: check_call then raises CalledProcessError (killed by a signal) although the job
    is requeued (seen on the local cluster). A requeue that SLURM refused (a positive exit
    status) or submitit's 'timed-out too many times' is a failure."""
    if not requeue.pending():
        return False
    if isinstance(exc, SystemExit):
        return True
    return (isinstance(exc, subprocess.CalledProcessError) and exc.returncode is not None and exc.returncode < 0
            and list(exc.cmd)[:2] == ["scontrol", "requeue"])


def _end_attempt(env_path, how: str) -> None:
    """Record how the latest attempt ended (completed, failed, requeued) in environment.json.
    An attempt with no end was killed outright (SIGKILL, a bare `scontrol requeue`, a crash)."""
    env = json.loads(env_path.read_text())
    env["attempts"][-1].update(ended=how, ended_at=_now())
    write_atomic(env_path, json.dumps(env, indent=1))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
