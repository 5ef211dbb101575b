"""MLflow in a helper process: the Tracker of a `python -m harness` run, started before the
run's heavy imports so that MLflow's own start-up runs beside them.

Why: a cell in a fresh process spends about 5.5 s importing torch, diffusers and transformers
on one core, then about 2.5 s on MLflow (importing it and its SQLAlchemy store, opening the
store). Both hold the GIL (a thread beside the imports was measured slower than no thread,
README "Per-cell overhead"), but a second process runs MLflow's part on the second core while
the first imports. The helper owns an ordinary `harness.tracking.Tracker`; this process asks it
through a pipe in JSON (strings, numbers, lists, dicts), so it never imports MLflow itself.
Whatever the helper's Tracker logs (the one "MLflow unavailable" warning) comes back with the
answer and is logged here, where the cell's log file hears it.

Nothing is lost when the helper is: a helper that died or never started answers nothing, which
is what a tracking store that is down does (a warning; results stay on disk; `python -m
harness.backfill` catches up)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("harness")

_helper: "TrackerProcess | None" = None


def settings(cfg: DictConfig) -> dict:
    """What a Tracker reads from a config: the helper's Tracker is made from these alone."""
    tracking = OmegaConf.to_container(cfg.tracking, resolve=True)
    keep = {k: tracking.get(k) for k in ("enabled", "uri", "experiment", "artifacts") if k in tracking}
    return {"out_dir": str(cfg.out_dir), "tracking": keep}


class TrackerProcess:
    """The helper: `python -m harness.tracker_process` on a pair of pipes, one JSON line each way
    per call."""

    def __init__(self, wanted: dict, cwd: str | None = None):
        self.settings = wanted
        to_helper_r, self._to_helper = os.pipe()
        self._from_helper, from_helper_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_repo(), os.environ.get("PYTHONPATH")) if p)}
        # stdin closed, stdout to stderr: the harness's stdout is its tables and summaries
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "harness.tracker_process", str(to_helper_r), str(from_helper_w)],
                                         pass_fds=(to_helper_r, from_helper_w), stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                         env=env, cwd=cwd)
        except BaseException:  # no helper: none of the four ends stays open
            for fd in (to_helper_r, self._to_helper, self._from_helper, from_helper_w):
                os.close(fd)
            raise
        os.close(to_helper_r)  # the helper's ends, now its own
        os.close(from_helper_w)
        self._writer = os.fdopen(self._to_helper, "w", buffering=1)
        self._reader = os.fdopen(self._from_helper, "r")
        self._writer.write(json.dumps(wanted) + "\n")
        self.trackers = 0  # HelperTrackers made so far: each has a Tracker of its own in the helper

    def ask(self, tracker: int, method: str, *args):
        """(result, tracking down) of Tracker.<method>(*args) of the helper's tracker number
        `tracker`; raises OSError when the helper is gone."""
        try:
            self._writer.write(json.dumps([tracker, method, list(args)]) + "\n")
            line = self._reader.readline()
        except ValueError as exc:  # a closed pipe
            raise OSError(str(exc)) from exc
        if not line:
            raise OSError(f"the MLflow helper process exited (code {self.proc.poll()})")
        answer = json.loads(line)
        for level, message in answer["logged"]:
            log.log(level, "%s", message)
        return answer["result"], answer["down"]


class HelperTracker:
    """A Tracker whose calls the helper process makes (harness.tracking.Tracker's interface)."""

    def __init__(self, helper: TrackerProcess, cfg: DictConfig):
        from harness.tracking import tracking_uri

        # a Tracker of its own in the helper, as `Tracker(cfg)` makes one here: a store that was
        # down for one cell of a sweep is tried again by the next
        helper.trackers += 1
        self.helper, self.number, self.uri = helper, helper.trackers, tracking_uri(cfg)
        self.out_dir = cfg.out_dir
        self.enabled, self.down = bool(cfg.tracking.enabled), False

    def _ask(self, method: str, *args):
        if not self.enabled or self.down:
            return None
        try:
            result, self.down = self.helper.ask(self.number, method, *args)
        except (OSError, json.JSONDecodeError) as exc:
            from harness.tracking import unavailable

            self.down = True
            log.warning("%s", unavailable(self.uri, str(exc), self.out_dir))
            return None
        return result

    @property
    def available(self) -> bool:
        return bool(self._ask("available"))

    def find_run(self, tag: str, value: str):
        return self._ask("find_run", tag, value)

    def get_or_create_run(self, tag: str, value: str, name: str, tags: dict, parent: str | None = None):
        return self._ask("get_or_create_run", tag, value, name, {k: None if v is None else str(v) for k, v in tags.items()}, parent)

    def log_metrics(self, run_id: str, records: list[dict]) -> bool:
        return bool(self._ask("log_metrics", run_id, records))

    def log_params(self, run_id: str, params: dict) -> None:
        self._ask("log_params", run_id, params)

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._ask("set_tags", run_id, {k: None if v is None else str(v) for k, v in tags.items()})

    def log_artifact(self, run_id: str, path) -> None:
        self._ask("log_artifact", run_id, str(path))

    def log_artifacts(self, run_id: str, folder, artifact_path: str) -> None:
        self._ask("log_artifacts", run_id, str(folder), artifact_path)

    def terminate(self, run_id: str, status: str = "FINISHED") -> None:
        self._ask("terminate", run_id, status)


def start(cfg: DictConfig, cwd: str | None = None) -> None:
    """Start this process's helper for `cfg`'s tracking (once; only where tracking is on and
    this process is the one that tracks: rank 0 of a data-parallel cell), in `cwd` (where the
    config's relative paths mean what they say; default: here)."""
    global _helper
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"  # (torchrun's, or a SLURM task's)
    if _helper is not None or not cfg.tracking.enabled or int(rank) != 0:
        return
    try:
        _helper = TrackerProcess(settings(cfg), cwd)
    except OSError as exc:  # no helper: the Tracker runs in this process, as it does without one
        log.info("MLflow helper process not started (%s): tracking runs in this process", exc)


def open_tracker(cfg: DictConfig):
    """The Tracker for `cfg`: the helper's when one runs for the same settings, else one here."""
    from harness.tracking import Tracker

    if _helper is not None and _helper.proc.poll() is None and _helper.settings == settings(cfg):
        return HelperTracker(_helper, cfg)
    return Tracker(cfg)


def _repo() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


def serve(requests, answers) -> None:
    """The helper's loop: MLflow imported at once (its client, entities and SQLAlchemy store:
    the slow part), then one answer per call until the pipe closes, each by the asking
    tracker's own Tracker (made from the first line's settings when first asked). The store
    is not opened before the first call: a run whose config fails validation must leave
    nothing behind, and opening a new store writes it."""
    import importlib

    from harness.tracking import Tracker, unavailable

    for module in ("mlflow.tracking", "mlflow.entities", "mlflow.store.tracking.sqlalchemy_store"):
        importlib.import_module(module)

    collect = _Collect()
    harness_log = logging.getLogger("harness")
    harness_log.addHandler(collect)
    harness_log.setLevel(logging.INFO)
    harness_log.propagate = False
    wanted = OmegaConf.create(json.loads(requests.readline()))
    trackers: dict[int, Tracker] = {}
    for line in requests:
        number, method, args = json.loads(line)
        if number not in trackers:
            trackers[number] = Tracker(wanted)
        tracker = trackers[number]
        try:
            result = getattr(tracker, method) if method == "available" else getattr(tracker, method)(*args)
        except Exception as exc:  # a bug here must not fail the cell: tracking goes down with a warning
            tracker.down = True
            collect.records.append((logging.WARNING, unavailable(tracker.uri, f"{method}: {type(exc).__name__}: {exc}", tracker.out_dir)))
            result = None
        answers.write(json.dumps({"result": result, "down": tracker.down, "logged": collect.records}, default=str) + "\n")
        answers.flush()
        collect.records = []


if __name__ == "__main__":
    with os.fdopen(int(sys.argv[1]), "r") as requests, os.fdopen(int(sys.argv[2]), "w") as answers:
        serve(requests, answers)
