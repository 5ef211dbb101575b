"""Whole sweeps through the CLI: every method end to end, MLflow runs, the table, reruns that
start no training, failures that do not stop the sweep."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMALL, SMALL_WORLD, SMOKE_SWEEP, run_cli


def mlflow_runs(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harness")
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def smoke(smoke_sweep):
    return smoke_sweep  # the real sweep=smoke, shared with the analysis tests


def test_smoke_sweep_runs_every_method(smoke):
    out, first = smoke
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 cells, 0 already completed, 6 to run" in first.stdout
    cells = sorted((out / "cells").iterdir())
    assert len(cells) == 6  # two-stage reused the sweep's distill cell
    methods = sorted(json.loads((c / "results.json").read_text())["method"] for c in cells)
    assert methods == ["bilevel", "bilevel", "distill", "teacher", "two_stage", "two_stage"]
    for c in cells:
        assert (c / "COMPLETED").exists() and (c / "samples.png").exists()
        results = json.loads((c / "results.json").read_text())
        assert results["cost"]["wall_s"] > 0 and results["cost"]["peak_rss_gb"] > 0
    (sweep,) = (out / "sweeps").iterdir()
    table = (sweep / "table.md").read_text()
    assert "bilevel (penalty, esd)" in table and "two-stage + concept_ablation" in table
    assert table in first.stdout
    assert (sweep / "table.csv").read_text().count("\n") == 7
    # planned (composed and validated) once, before Hydra started, and handed to the sweeper
    assert json.loads((sweep / "sweep.json").read_text())["planned_before_launch"] is True


def test_mlflow_has_a_parent_and_a_child_per_cell(smoke):
    out, _ = smoke
    runs = mlflow_runs(out)
    parents = [r for r in runs if "harness.sweep_id" in r.data.tags]
    children = [r for r in runs if "harness.cell_id" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    for r in children:
        assert r.info.status == "FINISHED"
        assert "heldout_mse" in r.data.metrics
        assert r.data.params["method.name"] == r.data.tags["harness.method"]
        trains = any(k.startswith(("finetune/", "bilevel/", "erase/")) for k in r.data.metrics)
        # the teacher is the unpruned reference row: evaluated, never trained
        assert trains == (r.data.tags["harness.method"] != "teacher")


def test_rerun_starts_no_training_and_no_new_runs(smoke):
    out, _ = smoke
    before = {c.name: (c / "COMPLETED").stat().st_mtime for c in (out / "cells").iterdir()}
    again = run_cli([*SMOKE_SWEEP, f"out_dir={out}"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 cells, 6 already completed, 0 to run" in again.stdout
    assert {c.name: (c / "COMPLETED").stat().st_mtime for c in (out / "cells").iterdir()} == before
    assert len(mlflow_runs(out)) == 7


def test_a_failing_cell_does_not_stop_the_sweep(tmp_path):
    # More DDIM steps than training timesteps: valid-looking, fails at run time in the eraser.
    args = ["harness", "-m", "method=distill,two_stage", *SMALL_WORLD, *SMALL, "eraser.sampler_steps=5000",
            f"out_dir={tmp_path}", "tracking.enabled=false"]
    first = run_cli(args)
    assert first.returncode == 1
    states = {c.name: ((c / "COMPLETED").exists(), (c / "FAILED").exists()) for c in (tmp_path / "cells").iterdir()}
    assert sorted(states.values()) == [(False, True), (True, False)]
    failed = next(c for c in (tmp_path / "cells").iterdir() if (c / "FAILED").exists())
    assert "Traceback" in (failed / "train.log").read_text()
    assert "FAILED" in first.stderr and failed.name in first.stderr
    second = run_cli(args)
    assert "2 cells, 1 already completed, 1 to run" in second.stdout
    assert len(json.loads((failed / "environment.json").read_text())["attempts"]) == 2


def test_jobs_status_and_tail_read_a_finished_local_sweep(smoke):
    out, _ = smoke
    status = run_cli(["harness.jobs", "--out-dir", str(out), "status", "smoke"])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].endswith("6 cells: 6 completed")
    rows = [line.split() for line in lines[2:8]]
    assert sorted(r[0] for r in rows) == sorted(c.name for c in (out / "cells").iterdir())
    assert all("completed" in r and "fid" in r for r in rows)
    cell = rows[0][0]
    tail = run_cli(["harness.jobs", "tail", cell[:5], "--out-dir", str(out), "-n", "500"])
    assert tail.returncode == 0 and f"cell {cell}" in tail.stdout
    unknown = run_cli(["harness.jobs", "--out-dir", str(out), "status", "nosuchsweep"])
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0 and "smoke-" in unknown.stderr
