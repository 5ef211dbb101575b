"""A cell: one fully resolved config, and its folder under `out_dir`.

Its identity is a short hash of the semantic part of the resolved config: the sections its
method depends on (launcher, tracking, runtime and paths excluded), a schema version, and the
checksums of the trained weights it loads (a rebuilt world makes new cells, not stale hits).
Asking for the same cell twice gives the same folder, and so its checkpoints and results.

Folder layout (cells/<id>/):
    config.yaml          the resolved config
    environment.json     git commit, dirty flag, package versions, host, attempts
    pruned_init.*        the pruned student before training (safetensors + json)
    checkpoints/<stage>/ step_XXXXXXXX.pt, written atomically
    metrics.jsonl        every logged loss and metric, one JSON object per line
    train.log            the cell's log, tracebacks included
    student.*            the final student (safetensors + json)
    results.json         final metrics
    FAILED               the error of the last failed attempt (removed on success)
    COMPLETED            written last: the cell is done
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.files import write_atomic  # noqa: F401 - used here and re-exported
from harness.method import get_method

SCHEMA_VERSION = 2  # 2: trained-weights checksums are part of a cell's identity
METHOD_CONF = Path(__file__).resolve().parent / "conf" / "method"
ID_LENGTH = 10


def method_keys(name: str) -> list[str]:
    """The keys a method's config defines (harness/conf/method/<name>.yaml, or HARNESS_METHODS')."""
    from harness.compose import config_file, read_yaml

    return list(read_yaml(config_file("method", name) or METHOD_CONF / f"{name}.yaml").keys())


def semantic_config(cfg: DictConfig) -> dict:
    """The part of the config that decides what a cell computes. Of the `method` section only
    the method's own keys count: a sweep-wide `method.K` makes no new distill cell."""
    method = get_method(cfg.method.name)
    sections = method.common_sections + method.sections
    resolved = OmegaConf.to_container(cfg, resolve=True)
    semantic = {"schema": SCHEMA_VERSION, **{s: resolved.get(s) for s in sections}}
    own = set(method_keys(cfg.method.name))
    semantic["method"] = {k: v for k, v in resolved["method"].items() if k in own}
    if not (semantic.get("eval") or {}).get("recovery_steps"):
        semantic["eval"].pop("recovery_steps", None)  # off: the ids of cells from before it existed hold
    # robustness probes are run on a cell's finished student and added to its results
    # (runner.add_robustness): they never make another cell
    (semantic.get("eval") or {}).pop("robustness", None)
    semantic["weights"] = weight_checksums(cfg)
    return semantic


def weight_checksums(cfg: DictConfig) -> dict[str, str]:
    """sha256 of each trained-weights file the cell reads: the world teacher, the world metric
    backbones. (SD 2.1 is named by its path and repo id in the model section.)"""
    from harness.models.tiny_weights import teacher_weights

    files = {}
    if (teacher := teacher_weights(cfg.model)) is not None:
        files["teacher"] = teacher
    if cfg.eval.get("backbone") == "world":
        from harness.metrics.world import FILES, world_weights

        folder = world_weights(cfg.eval.weights, "eval.weights")
        files.update({name: folder / name for name in FILES})
    return {key: _sha256(path) for key, path in files.items()}


def _sha256(path: Path) -> str:
    from harness.weights import sha256  # cached per process: a sweep hashes each file once

    return sha256(path)


def cell_id(cfg: DictConfig) -> str:
    blob = json.dumps(semantic_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


class Cell:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.id = cell_id(cfg)
        self.dir = Path(cfg.out_dir) / "cells" / self.id

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def done(self) -> bool:
        return self.path("COMPLETED").exists()

    @property
    def failed(self) -> bool:
        return self.path("FAILED").exists() and not self.done

    @property
    def started(self) -> bool:
        return self.path("config.yaml").exists()

    def state(self) -> str:
        if self.done:
            return "completed"
        if self.failed:
            return "failed"
        return "partial" if self.started else "new"

    def results(self) -> dict | None:
        path = self.path("results.json")
        return json.loads(path.read_text()) if self.done and path.exists() else None

    @contextmanager
    def lock(self):
        """Exclusive use of the folder: one process trains a cell at a time (two sweeps, or a
        two-stage cell and the distill cell it needs, may ask for the same one)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path(".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_config(self) -> None:
        write_atomic(self.path("config.yaml"), OmegaConf.to_yaml(self.cfg, resolve=True))

    def mark_failed(self, error: str) -> None:
        write_atomic(self.path("FAILED"), error)

    def mark_completed(self, results: dict) -> None:
        write_atomic(self.path("results.json"), json.dumps(results, indent=1, default=str))
        self.path("FAILED").unlink(missing_ok=True)
        write_atomic(self.path("COMPLETED"), results.get("finished_at", ""))  # last, always

    def metric_lines(self) -> list[str]:
        path = self.path("metrics.jsonl")
        return path.read_text().splitlines() if path.exists() else []

    def durable_metric_lines(self, lines: list[str] | None = None) -> int:
        """How many leading lines of metrics.jsonl a resume keeps: training lines at or before
        the latest checkpoint of their stage. Lines past it (and evaluation lines of an
        unfinished cell) are logged again when the cell resumes, so they are neither kept
        nor sent to MLflow: every (metric, step) is logged once."""
        from harness.trainer import checkpoints

        lines = self.metric_lines() if lines is None else lines
        latest: dict[str, int] = {}
        for n, line in enumerate(lines):
            record = json.loads(line)
            stage = record.get("stage")
            if stage not in latest:
                found = checkpoints(self.path("checkpoints") / stage) if stage not in ("eval", "recovery") else []
                latest[stage] = found[0][0] if found else -1
            if record.get("step", 0) > latest[stage] or latest[stage] < 0:
                return n
        return len(lines)

    def drop_undurable_metrics(self) -> int:
        """Before an attempt: cut metrics.jsonl to its durable lines. Returns how many went."""
        lines = self.metric_lines()
        keep = self.durable_metric_lines(lines)
        if keep < len(lines):
            write_atomic(self.path("metrics.jsonl"), "".join(line + "\n" for line in lines[:keep]))
        return len(lines) - keep

    def append_metrics(self, record: dict) -> None:
        with open(self.path("metrics.jsonl"), "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
