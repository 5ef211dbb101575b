"""A finished result survives a tracking outage; backfill brings MLflow up to date, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.backfill import backfill
from harness.runner import run_cell
from tests.conftest import REPO, SMALL, SMALL_WORLD, compose, run_cli


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
    # the tags a live cell gets from its environment, from the cell's record: commit and kernel set
    env = json.loads((cell / "environment.json").read_text())
    assert run.data.tags["harness.kernel_set"] == env["kernel_set"] and env["kernel_set"]
    assert run.data.tags["numerics.cpu_capability"] == env["numerics"]["cpu_capability"]
    assert run.data.tags.get("mlflow.source.git.commit") == (env.get("git") or {}).get("commit")
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


# Three small cells without image metrics: these tests are about what reaches MLflow.
THREE_CELLS = ["harness", "-m", "seed=0,1,2", *SMALL_WORLD, *SMALL, "finetune.steps=40", "runtime.checkpoint_every=10",
               "tracking.flush_every_s=0", "eval.backbone=none"]


@contextmanager
def mlflow_server(store: Path, port: int):
    """`mlflow server` on 127.0.0.1 with a SQLite store, one worker and no job runner (as
    analysis.ui starts it); stopped with its worker processes."""
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                             "--default-artifact-root", (store.parent / "artifacts").as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        yield proc
    finally:
        stop(proc)


def stop(proc) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def child_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness")
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if "harness.sweep_id" in r.data.tags]
    children = [r for r in found if "harness.cell_id" in r.data.tags]
    return parents, children


def test_a_tracking_server_killed_mid_sweep_costs_a_warning_and_backfill_catches_up(tmp_path):
    """The server dies while the first of three cells trains: the sweep exits 0 with every cell
    COMPLETED and a warning; with the server back, backfill gives one run per cell, each under
    the sweep's parent run, and running it again changes nothing."""
    from analysis.ui import free_port

    out, store, port = tmp_path / "out", tmp_path / "server" / "mlflow.db", free_port()
    store.parent.mkdir()
    uri = f"http://127.0.0.1:{port}"
    with mlflow_server(store, port) as server:
        sweep = subprocess.Popen([sys.executable, "-m", *THREE_CELLS, f"tracking.uri={uri}", f"out_dir={out}"], cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not any('"run_id"' in p.read_text() for p in out.glob("cells/*/tracking.json")):  # a cell is being tracked
            assert sweep.poll() is None and time.monotonic() < deadline, "no cell reached MLflow"
            time.sleep(0.2)
        stop(server)
        stdout, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr[-3000:]
    cells = list((out / "cells").iterdir())
    assert len(cells) == 3 and all((c / "COMPLETED").exists() for c in cells)
    assert "MLflow unavailable" in stderr + "".join((c / "train.log").read_text() for c in cells)

    with mlflow_server(store, port):
        for _ in range(2):
            summary = run_cli(["harness.backfill", "--out-dir", str(out), "--tracking-uri", uri])
            assert summary.returncode == 0, summary.stderr[-2000:]
            assert json.loads(summary.stdout)["cells_synced"] == 3
        parents, children = child_runs(uri)
        # another out_dir's cell on the same server: its artifacts go to the server's store too
        other = run_cli(["harness", *THREE_CELLS[3:], "seed=3", f"tracking.uri={uri}", f"out_dir={tmp_path / 'other'}"])
        assert other.returncode == 0, other.stderr[-2000:]
    artifacts = store.parent / "artifacts"
    assert not (out / "mlartifacts").exists() and not (tmp_path / "other" / "mlartifacts").exists()
    assert len(list(artifacts.glob("*/*/artifacts/results.json"))) == 4  # the three cells and the other one
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["harness.cell_id"] for r in children} == {c.name for c in cells}
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in [*parents, *children])


def test_two_identical_sweeps_started_at_once_share_the_work_and_the_store(tmp_path):
    """Both on a new out_dir at the same moment: both exit 0, each cell is trained once (one
    attempt), MLflow has one parent and one run per cell linked to it, and the SQLite store
    passes its integrity check."""
    import sqlite3

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sweeps = [subprocess.Popen([sys.executable, "-m", *THREE_CELLS, f"out_dir={out}"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for sweep in sweeps:
        _, stderr = sweep.communicate(timeout=900)
        assert sweep.returncode == 0, stderr[-3000:]
        assert "MLflow unavailable" not in stderr, stderr[-3000:]
    cells = list((out / "cells").iterdir())
    assert len(cells) == 3
    for cell in cells:
        attempts = json.loads((cell / "environment.json").read_text())["attempts"]
        assert [a["ended"] for a in attempts] == ["completed"], attempts
    parents, children = child_runs(f"sqlite:///{out / 'mlflow.db'}")
    assert len(parents) == 1 and len(children) == 3
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    for sweep_json in out.glob("sweeps/*/sweep.json"):
        json.loads(sweep_json.read_text())  # whole, not interleaved


def schema(db: Path) -> tuple:
    """(every table and index as a sorted set of its definition's lines, every table's rows).
    Lines, not text: MLflow's own migrations order a table's constraints differently from one
    run to the next (seen: two stores made in a row disagree on the runs table's CHECKs)."""
    import sqlite3

    def lines(sql):
        return tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines()))

    with sqlite3.connect(db) as conn:
        tables = sorted((kind, name, lines(sql)) for kind, name, sql in
                        conn.execute("select type, name, sql from sqlite_master where name not like 'sqlite_%'"))
        rows = {name: conn.execute(f'select * from "{name}"').fetchall() for kind, name, _ in tables if kind == "table"}
    conn.close()
    return tables, rows


def test_a_store_made_from_the_template_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    """Same schema, same rows (the Default experiment's times aside), and MLflow opens it; a
    template others could have changed is not used but made again."""
    from mlflow.tracking import MlflowClient

    from harness import mlflow_store

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'by_mlflow.db'}").search_experiments()
    assert mlflow_store.create(tmp_path / "copy" / "mlflow.db") and not mlflow_store.create(tmp_path / "copy" / "mlflow.db")
    (want_tables, want_rows), (got_tables, got_rows) = schema(tmp_path / "by_mlflow.db"), schema(tmp_path / "copy" / "mlflow.db")
    assert got_tables == want_tables
    drop_times = lambda rows: [r[:4] + r[6:] for r in rows["experiments"]]  # noqa: E731 (creation, last update)
    assert drop_times(got_rows) == drop_times(want_rows) and got_rows["experiments"][0][2] == str(tmp_path / "mlruns" / "0")
    assert {k: v for k, v in got_rows.items() if k != "experiments"} == {k: v for k, v in want_rows.items() if k != "experiments"}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("x"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}

    template = mlflow_store.template()
    assert oct(template.stat().st_mode & 0o777) == oct(0o600) and oct(template.parent.stat().st_mode & 0o777) == oct(0o700)
    template.write_bytes(b"planted")
    template.chmod(0o666)
    assert mlflow_store.template() == template and template.stat().st_mode & 0o777 == 0o600
    assert schema(template)[0] == want_tables


def test_a_new_out_dirs_store_comes_from_the_template(tmp_path, monkeypatch):
    """The first tracked cell of an out_dir copies the template (made once per machine)."""
    from harness import mlflow_store
    from harness.tracking import Tracker

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    made = []
    monkeypatch.setattr(mlflow_store, "create", lambda db, create=mlflow_store.create: made.append(db) or create(db))
    tracker = Tracker(compose([], tmp_path / "out"))
    assert tracker.get_or_create_run("harness.cell_id", "c0", "c0", {}) is not None
    assert made == [tmp_path / "out" / "mlflow.db"] and (tmp_path / "out" / "mlflow.db").is_file()
    assert (tmp_path / "cache" / "mlflow-store").is_dir()


def test_the_mlflow_helper_process_tracks_as_the_tracker_does_and_its_loss_costs_a_warning(tmp_path):
    """A `python -m harness` run tracks through a helper process (harness/tracker_process.py):
    what it logs reaches MLflow as the in-process Tracker's calls would, a failing call comes
    back as the one warning line, and a helper that died leaves the run going untracked with
    that warning; a config with other tracking settings gets a Tracker of its own."""
    import logging

    from mlflow.tracking import MlflowClient

    from harness import tracker_process
    from harness.tracking import CELL_TAG, Tracker

    class Warnings(logging.Handler):  # on the harness logger itself (setup_logging stops its propagation)
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    warnings = Warnings()
    out = tmp_path / "out"
    cfg = compose(["tracking.enabled=true"], out)
    helper = tracker_process.TrackerProcess(tracker_process.settings(cfg))
    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr(tracker_process, "_helper", helper)
    logging.getLogger("harness").addHandler(warnings)
    try:
        tracker = tracker_process.open_tracker(cfg)
        assert isinstance(tracker, tracker_process.HelperTracker)
        other = compose(["tracking.enabled=true", "tracking.experiment=other"], out)
        assert isinstance(tracker_process.open_tracker(other), Tracker)  # not the helper's settings
        run_id = tracker.get_or_create_run(CELL_TAG, "c1", "cell c1", {"harness.method": "distill", "none": None})
        assert run_id and tracker.get_or_create_run(CELL_TAG, "c1", "again", {}) == run_id  # found, not made twice
        assert tracker.log_metrics(run_id, [{"time": 1.0, "step": 3, "values": {"fid": 12.5, "flag": True, "note": "x"}}])
        tracker.log_params(run_id, {"finetune.steps": "4"})
        tracker.set_tags(run_id, {"harness.seed": 0})
        (tmp_path / "a.txt").write_text("a")
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "b.txt").write_text("b")
        tracker.log_artifact(run_id, tmp_path / "a.txt")
        tracker.log_artifacts(run_id, tmp_path / "images", "images")
        tracker.terminate(run_id)
        client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"fid": 12.5}
        assert run.data.params == {"finetune.steps": "4"} and run.data.tags["harness.seed"] == "0"
        assert run.data.tags["harness.method"] == "distill" and "none" not in run.data.tags
        assert sorted(a.path for a in client.list_artifacts(run_id)) == ["a.txt", "images"]

        assert not warnings.lines
        assert not tracker.log_metrics("no-such-run", [{"time": 1.0, "step": 0, "values": {"fid": 1.0}}])
        assert tracker.down and len(warnings.lines) == 1 and "MLflow unavailable" in warnings.lines[0], warnings.lines
        assert tracker.log_metrics(run_id, [{"time": 1.0, "step": 4, "values": {"fid": 1.0}}]) is False  # down: nothing more is sent

        helper.proc.kill()
        helper.proc.wait()
        warnings.lines.clear()
        after = tracker_process.HelperTracker(helper, cfg)
        assert after.get_or_create_run(CELL_TAG, "c2", "cell c2", {}) is None
        after.terminate("anything")
        assert after.down and len(warnings.lines) == 1 and "MLflow unavailable" in warnings.lines[0], warnings.lines
        assert isinstance(tracker_process.open_tracker(cfg), Tracker)  # a dead helper: tracking here
    finally:
        logging.getLogger("harness").removeHandler(warnings)
        monkeypatched.undo()
        if helper.proc.poll() is None:
            helper.proc.kill()
