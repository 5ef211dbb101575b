"""A finished result survives a tracking outage; backfill brings MLflow up to date, once."""

from __future__ import annotations

import json

from harness.backfill import backfill
from harness.runner import run_cell
from tests.conftest import compose


def runs(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harness")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_cell_finishes_when_mlflow_is_down_and_backfill_is_idempotent(tmp_path):
    out = tmp_path / "out"
    cfg = compose(["tracking.uri=http://127.0.0.1:9"], out)  # nothing listens on port 9
    results = run_cell(cfg)
    (cell,) = (out / "cells").iterdir()
    assert (cell / "COMPLETED").exists()
    assert json.loads((cell / "results.json").read_text())["metrics"] == results["metrics"]
    assert "MLflow unavailable" in (cell / "train.log").read_text()
    assert not (out / "mlflow.db").exists()

    first = backfill(out)
    assert first["cells_synced"] == 1 and not first["tracking_down"]
    (run,) = runs(out)
    assert run.data.tags["harness.cell_id"] == cell.name
    assert run.data.metrics["heldout_mse"] == results["metrics"]["heldout_mse"]
    assert any(k.startswith("finetune/lower/") for k in run.data.metrics)

    second = backfill(out)
    assert second["cells_synced"] == 1
    assert len(runs(out)) == 1
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_metric_history(run.info.run_id, "finetune/lower/loss")
    assert len(history) == len([1 for line in (cell / "metrics.jsonl").read_text().splitlines() if "finetune/lower/loss" in line])
