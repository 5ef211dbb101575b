"""A finished result survives a tracking outage; backfill brings MLflow up to date, once."""

from __future__ import annotations

import json

import pytest

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


def test_a_resumed_cell_logs_every_metric_step_once(tmp_path, monkeypatch):
    """Killed after logging steps 30 and 40 but before the checkpoint at 40: the restart resumes
    from step 20 and logs 30 and 40 again. metrics.jsonl and MLflow hold each (metric, step)
    once, and each evaluation metric once (MLflow only gets lines a checkpoint covers)."""
    from mlflow.tracking import MlflowClient

    from harness.trainer import Trainer

    out = tmp_path / "out"
    cfg = compose(["finetune.steps=60", "runtime.checkpoint_every=20", "runtime.log_every=10",
                   "runtime.keep_checkpoints=5", "tracking.flush_every_s=0"], out)
    save = Trainer._save

    def killed_at_40(self, folder, stage, optims, step, *args):
        if step == 40:
            raise KeyboardInterrupt  # the process dies: nothing after this runs
        return save(self, folder, stage, optims, step, *args)

    monkeypatch.setattr(Trainer, "_save", killed_at_40)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cfg)
    (cell,) = (out / "cells").iterdir()
    logged = [json.loads(x)["step"] for x in (cell / "metrics.jsonl").read_text().splitlines()]
    assert logged == [10, 20, 30, 40]  # the killed attempt got as far as logging step 40
    monkeypatch.setattr(Trainer, "_save", save)
    run_cell(cfg)

    records = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["stage"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and [s for st, s in keys if st == "finetune"] == [10, 20, 30, 40, 50, 60]
    (run,) = runs(out)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for key in ("finetune/lower/loss", "heldout_mse", "fid"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "finetune/lower/loss")) == [10, 20, 30, 40, 50, 60]
