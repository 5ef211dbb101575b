"""MLflow tracking: a parent run per sweep, a child run per cell.

The cell folder is the source of truth (metrics.jsonl, results.json); MLflow is a view of it.
Every MLflow call is guarded: when the tracking server is unreachable the cell still finishes,
and `python -m harness.backfill` brings MLflow up to date later. Syncing is idempotent: a
cell's `tracking.json` records its run id and how many metric lines MLflow already has, and
runs are found again by their `harness.cell_id` / `harness.sweep_id` tags."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import numerics
from harness.files import file_mode, write_atomic

log = logging.getLogger("harness")

CELL_TAG, SWEEP_TAG = "harness.cell_id", "harness.sweep_id"


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return f"sqlite:///{Path(cfg.out_dir).resolve() / 'mlflow.db'}"


def flatten(tree, prefix: str = "") -> dict[str, str]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(tree) if isinstance(tree, list) else str(tree)
    return out


def unavailable(uri: str, why: str, out_dir) -> str:
    """The one warning line of a tracking store that went down."""
    return f"MLflow unavailable at {uri} ({why}); results stay on disk, run `python -m harness.backfill --out-dir {out_dir}` later"


class Tracker:
    """Guarded access to one MLflow experiment."""

    def __init__(self, cfg: DictConfig):
        # Fail fast when a tracking server is down (MLflow's default retries take minutes).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # MLflow prints a "View run" link to stdout per finished run on a server: the harness's
        # stdout is its tables and summaries (and backfill's JSON)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = tracking_uri(cfg)
        self.out_dir = Path(cfg.out_dir).resolve()
        self.experiment_name = cfg.tracking.experiment
        # Where run artifacts go. A tracking server keeps them in its own artifact store (the
        # experiment is shared by clients with other out_dirs); the local store, or a server
        # with `tracking.artifacts=out_dir`, in <out_dir>/mlartifacts.
        local = (Path(cfg.out_dir).resolve() / "mlartifacts").as_uri()
        server = self.uri.startswith(("http://", "https://"))
        self.artifact_root = local if not server or cfg.tracking.get("artifacts", "auto") == "out_dir" else None
        self.enabled = bool(cfg.tracking.enabled)
        self._client, self._experiment_id, self.down = None, None, False
        self._lock_depth = 0
        # SQLite takes one writer at a time: concurrent sweeps on one out_dir meet "database is
        # locked" unless their calls take turns (a server serialises them itself)
        self._serialise = self.uri.startswith("sqlite:")
        # the lock: beside a SQLite store (whichever out_dirs share it), else in out_dir
        db = self.uri.removeprefix("sqlite:///")
        self.lock_path = Path("/" + db.lstrip("/") + ".lock") if self._serialise else self.out_dir / ".tracking.lock"

    def call(self, what: str, fn, *args, **kwargs):
        """Run an MLflow call; on failure, log once and carry on without tracking. `fn` is a
        callable or the name of a client method: the client is reached inside the guard, so
        nothing touches it once tracking is down."""
        if not self.enabled or self.down:
            return None
        try:
            with self._store_lock() if self._serialise else nullcontext():
                if isinstance(fn, str):
                    fn = getattr(self._connect(), fn)
                return fn(*args, **kwargs)
        except Exception as exc:  # any tracking failure must not fail the cell
            self.down = True
            log.warning("%s", unavailable(self.uri, f"{what}: {exc}", self.out_dir))
            return None

    @contextmanager
    def _store_lock(self):
        """Exclusive among the processes sharing this out_dir while the store is created and
        while a run is looked up and created: two sweeps started at once on a new out_dir
        otherwise both create the SQLite schema (one fails: 'table alembic_version already
        exists') or both create a run for the same cell."""
        if self._lock_depth:  # re-entrant: flock on a second descriptor would wait on ourselves
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _connect(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            with self._store_lock():
                if self._serialise:
                    self._new_store(self.lock_path.with_suffix(""))
                client = MlflowClient(tracking_uri=self.uri)
                exp = client.get_experiment_by_name(self.experiment_name)
                self._experiment_id = exp.experiment_id if exp else client.create_experiment(self.experiment_name, artifact_location=self.artifact_root)
                if self._serialise:  # SQLite makes its file 0644 whatever the umask: the out_dir's policy instead
                    db = self.lock_path.with_suffix("")
                    if db.is_file() and db.stat().st_uid == os.getuid():
                        os.chmod(db, file_mode())
            if exp and self.artifact_root and exp.artifact_location.rstrip("/") != self.artifact_root.rstrip("/"):
                # an experiment's artifact location is fixed when it is created
                log.warning("MLflow experiment %r keeps its artifacts at %s (set when it was created), not %s: "
                            "use a new tracking.experiment to have them under out_dir", self.experiment_name,
                            exp.artifact_location, self.artifact_root)
            self._client = client
        return self._client

    @staticmethod
    def _new_store(db: Path) -> None:
        """A new SQLite store as a copy of MLflow's own empty one (harness/mlflow_store.py);
        should that fail, MLflow makes it as usual."""
        from harness import mlflow_store

        try:
            if mlflow_store.create(db):
                log.info("MLflow store %s made from its template", db)
        except (OSError, sqlite3.Error) as exc:
            log.warning("MLflow store template unusable (%s); MLflow makes %s itself", exc, db)

    @property
    def available(self) -> bool:
        return self.call("connect", self._connect) is not None

    def find_run(self, tag: str, value: str):
        if not self.available:
            return None
        runs = self.call("search", "search_runs", [self._experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def get_or_create_run(self, tag: str, value: str, name: str, tags: dict, parent: str | None = None) -> str | None:
        if not self.available:
            return None
        with self._store_lock():  # one run per tag value, whoever asks at the same time
            run_id = self.find_run(tag, value)
            if run_id or self.down:
                return run_id
            all_tags = {tag: value, **{k: str(v) for k, v in tags.items() if v is not None}}
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            run = self.call("create run", "create_run", self._experiment_id, run_name=name, tags=all_tags)
            return run.info.run_id if run else None

    def log_metrics(self, run_id: str, records: list[dict]) -> bool:
        from mlflow.entities import Metric

        metrics = [
            Metric(key, float(value), int(r["time"] * 1000), int(r.get("step", 0)))
            for r in records
            for key, value in r["values"].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        for i in range(0, len(metrics), 900):
            if self.call("log metrics", "log_batch", run_id, metrics=metrics[i : i + 900]) is None and self.down:
                return False
        return True

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self.call("log params", "log_batch", run_id, params=items[i : i + 90])

    def set_tags(self, run_id: str, tags: dict) -> None:
        for k, v in tags.items():
            if v is not None:
                self.call("set tag", "set_tag", run_id, k, str(v))

    def log_artifact(self, run_id: str, path: Path | str) -> None:
        if Path(path).exists():
            self.call("log artifact", "log_artifact", run_id, str(path))

    def log_artifacts(self, run_id: str, folder: Path | str, artifact_path: str) -> None:
        self.call("log artifacts", "log_artifacts", run_id, str(folder), artifact_path)

    def terminate(self, run_id: str, status: str = "FINISHED") -> None:
        self.call("terminate", "set_terminated", run_id, status)


def cell_tags(cfg: DictConfig, cell_id: str, env: dict | None = None) -> dict:
    from harness.cell import cell_id as id_of
    from harness.method import get_method

    m = cfg.method
    method = get_method(m.name)
    uses_concepts = method.erases
    env = env or {}
    return {
        "harness.method": m.name,
        "harness.solver": m.get("solver"),
        "harness.K": OmegaConf.select(cfg, method.inner_steps_key) if method.inner_steps_key else None,
        "harness.eraser": cfg.eraser.name if uses_concepts else None,
        "harness.concepts": ",".join(cfg.concepts.erase) if uses_concepts else None,
        "harness.pruning_ratio": cfg.pruning.ratio if method.prunes else None,
        "harness.depends_on": id_of(ref) if (ref := method.reference(cfg)) is not None else None,
        "harness.model": cfg.model.name,
        "harness.seed": cfg.seed,
        "harness.metric_backbones": cfg.eval.get("backbone"),
        "mlflow.source.git.commit": (env.get("git") or {}).get("commit"),
        **slurm_tags(env.get("slurm") or {}),
        **numerics.tags(env),
    }


def slurm_tags(slurm: dict) -> dict:
    """The job as squeue and sacct name it (<array job>_<task> for an array task)."""
    array, task = slurm.get("slurm_array_job_id"), slurm.get("slurm_array_task_id")
    return {
        "slurm.job_id": f"{array}_{task}" if array and task is not None else slurm.get("slurm_job_id"),
        "slurm.array_task_id": task,
        "slurm.restarts": slurm.get("slurm_restart_count"),
    }


def summary_values(results: dict) -> dict:
    """A finished cell's run metrics: its evaluation, its cost (cost/*) and its size (pruning/*),
    so a table or a figure can be made from MLflow alone."""
    values = dict(results.get("metrics", {}))
    for key, value in (results.get("cost") or {}).items():
        if value is not None:
            values[f"cost/{key}"] = value
    p = results.get("pruning") or {}
    if p.get("params_after"):
        values["pruning/params_m"] = p["params_after"] / 1e6
        values["pruning/macs_pct"] = 100 * p["macs_after"] / p["macs_before"]
    return values


class CellRun:
    """The child run of one cell, synced from the cell folder."""

    def __init__(self, tracker: Tracker, cell, parent_run_id: str | None = None, flush_every_s: float = 10.0):
        self.tracker, self.cell, self.parent = tracker, cell, parent_run_id
        self.state_path = cell.path("tracking.json")
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        if self.state.get("uri") not in (None, tracker.uri):
            self.state = {}  # synced to another tracking store before: this one starts afresh
        self.flush_every_s, self._last_flush = flush_every_s, 0.0
        # metric lines MLflow may have: those a resume keeps (Cell.durable_metric_lines); more
        # at each checkpoint, all of them when the cell completes
        self.durable = cell.durable_metric_lines()
        if self.state.get("logged_lines", 0) > len(cell.metric_lines()):  # cut by a resume (older versions sent such lines)
            self.state["logged_lines"] = self.durable

    def _save(self) -> None:
        write_atomic(self.state_path, json.dumps(self.state))

    def start(self, env: dict | None = None) -> None:
        t = self.tracker
        parent = self.state.get("parent_run_id") or self.parent
        run_id = self.state.get("run_id") or t.get_or_create_run(
            CELL_TAG, self.cell.id, f"{self.cell.cfg.method.name}-{self.cell.id}", cell_tags(self.cell.cfg, self.cell.id, env), parent
        )
        if run_id is None:
            return
        if "run_id" not in self.state:
            self.state.update(run_id=run_id, uri=t.uri, parent_run_id=parent, logged_lines=0, synced=False)
            t.log_params(run_id, flatten(OmegaConf.to_container(self.cell.cfg, resolve=True)))
            self._save()
        elif env:
            t.set_tags(run_id, cell_tags(self.cell.cfg, self.cell.id, env))

    def checkpointed(self) -> None:
        """A checkpoint is on disk: every line logged so far survives a restart."""
        self.durable = len(self.cell.metric_lines())
        self.flush()

    def flush(self, force: bool = False, final: bool = False) -> None:
        """Send the durable metric lines MLflow does not have yet (rate-limited unless forced;
        `final`: the cell has completed, every line is durable)."""
        if not force and time.monotonic() - self._last_flush < self.flush_every_s:
            return
        self._last_flush = time.monotonic()
        run_id = self.state.get("run_id")
        if run_id is None or self.tracker.down:
            return
        lines = self.cell.metric_lines()
        end = len(lines) if final else min(self.durable, len(lines))
        new = [json.loads(x) for x in lines[self.state["logged_lines"] : end] if x.strip()]
        if new and self.tracker.log_metrics(run_id, new):
            self.state["logged_lines"] = end
            self._save()

    SAMPLES_PER_CONCEPT = 8

    def log_concept_samples(self, run_id: str) -> None:
        """The first images of each concept set (fixed prompts and seeds, the same in every cell),
        as images/concept_<name>/, and of the robustness probes' attacked prompts, as
        images/robustness/<name>/<soft|discrete>/: the sample-grid figure is drawn from MLflow alone."""
        import shutil
        import tempfile

        images = self.cell.path("images")
        sets = sorted([*images.glob("concept_*/prompts.jsonl"), *images.glob("robustness/*/*/prompts.jsonl")])
        if not sets:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for prompts in sets:
                dest = Path(tmp) / prompts.parent.relative_to(images)
                dest.mkdir(parents=True)
                lines = prompts.read_text().splitlines()[: self.SAMPLES_PER_CONCEPT]
                (dest / "prompts.jsonl").write_text("\n".join(lines) + "\n")
                for line in lines:
                    shutil.copy(prompts.parent / json.loads(line)["file"], dest)
            self.tracker.log_artifacts(run_id, tmp, "images")

    def finish(self, results: dict | None, status: str = "FINISHED") -> bool:
        """Final metrics, artifacts, status. Returns True when MLflow has everything."""
        run_id = self.state.get("run_id")
        if run_id is None:
            return False
        self.flush(force=True, final=results is not None)
        t = self.tracker
        if results is not None:
            # cost and size; the evaluation metrics came with metrics.jsonl's eval line
            values = {k: v for k, v in summary_values(results).items() if k not in results.get("metrics", {})}
            if values:
                t.log_metrics(run_id, [{"time": time.time(), "step": 0, "values": values}])
            for name in ("config.yaml", "results.json", "samples.png", "environment.json", "robustness.json", "robustness.png"):
                t.log_artifact(run_id, self.cell.path(name))
            self.log_concept_samples(run_id)
        t.terminate(run_id, status)
        if not t.down and status == "FINISHED":
            self.state["synced"] = True
            self._save()
        return not t.down
