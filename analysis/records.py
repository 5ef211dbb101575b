"""A sweep's cells as flat records, read from MLflow (or, at the end of a sweep, from disk).

Both sources give the same record: the cell's flattened config (MLflow params), its final
metrics (evaluation, cost/*, pruning/*) and its state. Tables and figures are built from
records only, so anything tracked anywhere can be tabulated."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.record import Record
from harness.tracking import CELL_TAG, SWEEP_TAG


class AnalysisError(Exception):
    """Bad analysis input (unknown sweep, unreachable store): one line for the user."""


# -- from MLflow --------------------------------------------------------------------------
@dataclass
class Study:
    """The runs of one sweep (or of a filter expression)."""

    name: str
    records: list[Record]
    tracking_uri: str
    parent_run_id: str | None = None
    experiment_id: str | None = None

    @property
    def completed(self) -> list[Record]:
        return [r for r in self.records if r.state == "completed"]


def client_for(uri: str):
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise AnalysisError(f"no MLflow store at {uri[len('sqlite:///'):]} (give --out-dir of a run, or --tracking-uri)")
    return MlflowClient(tracking_uri=uri)


def _experiment(client, name: str):
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as exc:  # an unreachable server: one line
        raise AnalysisError(f"MLflow unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if exp is None:
        raise AnalysisError(f"no MLflow experiment '{name}' in this store")
    return exp


def _search(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _record(run) -> Record:
    status = run.info.status
    state = {"FINISHED": "completed", "FAILED": "failed", "RUNNING": "running", "KILLED": "running"}.get(status, status.lower())
    tags = run.data.tags
    # NaN: a metric a later measurement no longer makes (harness/runner.py: add_robustness)
    metrics = {k: v for k, v in run.data.metrics.items() if not math.isnan(v)}
    return Record(tags.get(CELL_TAG, run.info.run_id), state, dict(run.data.params), metrics, run.info.run_id,
                  tags.get("harness.depends_on"), tags.get("harness.kernel_set"))


def sweeps(uri: str, experiment: str = "harness") -> list[dict]:
    """Every sweep in the store, newest first: id, name, parent run, cells planned, status."""
    client = client_for(uri)
    exp = _experiment(client, experiment)
    parents = [r for r in _search(client, exp.experiment_id, f"tags.`{SWEEP_TAG}` != ''")]
    parents.sort(key=lambda r: r.info.start_time, reverse=True)
    return [{"sweep_id": r.data.tags[SWEEP_TAG], "name": r.data.tags.get("harness.sweep"), "run_id": r.info.run_id,
             "cells": r.data.tags.get("harness.cells"), "status": r.info.status} for r in parents]


def load(uri: str, sweep: str | None = None, filter_string: str | None = None, experiment: str = "harness") -> Study:
    """A sweep's cells from MLflow: `sweep` is a sweep id (paper_table-1c2d3e4f) or a name
    (paper_table: its latest sweep); or `filter_string`, an MLflow filter over cell runs.
    Cells the sweep planned (its cells.json artifact) with no run come back as `missing`."""
    client = client_for(uri)
    exp = _experiment(client, experiment)
    if sweep is None and filter_string is None:
        raise AnalysisError("give a sweep (name or id) or a filter expression")
    if sweep is None:
        base = f"tags.`{CELL_TAG}` != ''"
        runs = _search(client, exp.experiment_id, f"{base} and {filter_string}" if filter_string.strip() else base)
        return Study(filter_string, _latest_per_cell([_record(r) for r in runs]), uri, None, exp.experiment_id)
    found = sweeps(uri, experiment)
    match = [s for s in found if s["sweep_id"] == sweep] or [s for s in found if s["name"] == sweep]
    if not match:
        known = ", ".join(sorted({s["name"] for s in found if s["name"]} | {s["sweep_id"] for s in found})) or "none"
        raise AnalysisError(f"sweep '{sweep}' is not in {uri}; sweeps there: {known}")
    parent = match[0]
    extra = f" and {filter_string}" if filter_string else ""
    runs = _search(client, exp.experiment_id, f"tags.`mlflow.parentRunId` = '{parent['run_id']}'{extra}")
    records = _latest_per_cell([_record(r) for r in runs])
    planned = _planned(client, parent["run_id"])
    have = {r.cell for r in records}
    for cell in planned:
        if cell["cell_id"] not in have:
            # a planned cell with no run under this parent: it may have finished in an earlier
            # sweep (a cache hit), which holds its run; otherwise it is missing
            earlier = _search(client, exp.experiment_id, f"tags.`{CELL_TAG}` = '{cell['cell_id']}'")
            if earlier:
                records.append(_latest_per_cell([_record(r) for r in earlier])[0])
            else:
                records.append(Record(cell["cell_id"], "missing", _params_of(cell)))
    return Study(parent["sweep_id"], records, uri, parent["run_id"], exp.experiment_id)


def _latest_per_cell(records: list[Record]) -> list[Record]:
    """One record per cell: a finished run wins over an older failed or killed one."""
    best: dict[str, Record] = {}
    rank = {"completed": 3, "running": 2, "failed": 1}
    for r in records:
        if r.cell not in best or rank.get(r.state, 0) > rank.get(best[r.cell].state, 0):
            best[r.cell] = r
    return list(best.values())


def _planned(client, parent_run_id: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_run_id, "cells.json", tmp)
        except Exception:  # a sweep from before the plan was logged: only its runs are known
            return []
        return json.loads(Path(path).read_text())


def _params_of(cell: dict) -> dict[str, str]:
    """A planned cell's row keys (harness.record.ROW_KEYS, in the sweep's cells.json): a cell
    that never ran still gets its row, marked missing."""
    if cell.get("params"):
        return dict(cell["params"])
    params = {"method.name": cell["method"], "seed": str(cell.get("seed", 0))}  # cells.json of an older sweep
    if cell.get("ratio") is not None:
        params["pruning.ratio"] = str(cell["ratio"])
    if cell.get("K") is not None:
        params["method.K"] = str(cell["K"])
    return params
