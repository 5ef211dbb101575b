"""Tuning: a bad `tune` block fails in one line before anything starts; two local workers on
one journal spend the budget exactly, each trial told once, no cell trained twice."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMALL, SMALL_WORLD, fails_in_one_line, run_cli

BAD = {
    "unknown objective metric": (["+tune.objectives.fidd=minimize"], "tune.objectives.fidd", "a metric this sweep's cells report"),
    "empty space": (["~tune.space"], "tune.space", "at least one config key"),
    "low not below high": (["tune.space.method.K.int=[40,2]"], "tune.space.method.K.int=[40, 2]", "low < high"),
    "log scale from zero": (["tune.space.method.upper_lr.float=[0,0.1]"], "tune.space.method.upper_lr.float", "low > 0 on a log scale"),
    "sqlite with two workers": (["tune.storage=sqlite:///study.db"], "tune.storage='sqlite:///study.db'", "SQLite fails under concurrent writers"),
    "a key no method declares": (["+tune.space.method.KK={int:[1,3]}"], "tune.space.method.KK", "a declared config key"),
    "a choice the key refuses": (["tune.space.method.upper_params.choice=[xattn,bogus]"], "method.upper_params='bogus'", "one of xattn, noxattn, full"),
    "unknown sampler": (["tune.sampler=grid"], "tune.sampler='grid'", "tpe, nsga2"),
    "pruning a two-objective study": (["tune.pruner=median", "eval.recovery_steps=[50]"], "tune.pruner='median'",
                                      "Optuna prunes single-objective studies only"),
    "pruning without probe steps": (["tune.pruner=median", "~tune.objectives", "+tune.objectives={fid:minimize}"],
                                    "tune.pruner='median'", "eval.recovery_steps"),
    "pruning on an end-only metric": (["tune.pruner=median", "eval.recovery_steps=[50]", "~tune.objectives",
                                       "+tune.objectives={csd/stripes:minimize}"], "tune.pruner='median'", "measured only when a cell ends"),
    "unknown pruner": (["tune.pruner=asha"], "tune.pruner='asha'", "median, hyperband"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_tune_block_fails_in_one_line_before_anything_starts(case, tmp_path, capsys):
    args, name, accepted = BAD[case]
    fails_in_one_line(["-m", "sweep=tune_bilevel", *args], tmp_path, capsys, name, accepted)


# bilevel cells a few steps long, judged on a model-level metric (no image backbones)
TINY_STUDY = ["-m", "sweep=tune_bilevel", *SMALL_WORLD, *SMALL, "eval.backbone=none", "~tune.objectives",
              "+tune.objectives={heldout_mse:minimize}", "tune.constraints=[]", "tune.trials=6", "tune.workers=2",
              "method.upper_batch_size=2", "tracking.enabled=false"]


def test_two_workers_on_one_journal_spend_the_budget_once(tmp_path):
    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study, study_name

    out = tmp_path / "out"
    done = run_cli(["harness", *TINY_STUDY, f"out_dir={out}"], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (out / "optuna").iterdir()
    cfg = compose_config([a for a in TINY_STUDY if a != "-m"] + [f"out_dir={out}"])
    spec = parse(cfg)
    assert folder.name == study_name(cfg, spec)
    study = open_study(folder.name, spec, folder)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 and len(states) == 6, states
    assert study.trials[0].params["method.upper_lr"] == pytest.approx(1e-3)  # the sweep's own point first
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both workers took trials
    cells = {t.user_attrs["cell"] for t in study.trials}
    for cell in cells:  # a cell asked for twice is trained once
        attempts = json.loads((out / "cells" / cell / "environment.json").read_text())["attempts"]
        assert [a["ended"] for a in attempts] == ["completed"], attempts
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 6} and summary["front"]

    again = run_cli(["harness", *TINY_STUDY, f"out_dir={out}"], timeout=300)  # the same command: resumes, nothing to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(open_study(folder.name, spec, folder).trials) == 6
    shown = run_cli(["harness.jobs", "study", "--out-dir", str(out)], timeout=120)
    assert shown.returncode == 0 and "6 complete" in shown.stdout and "front (heldout_mse minimize): " in shown.stdout, shown.stdout + shown.stderr

    _dashboard_serves(out, folder.name)

    from analysis import tune

    assert tune.main(["--out-dir", str(out), "--boot", "50", "--no-log"]) == 0
    report = (out / "analysis" / "tune" / "tune.md").read_text()
    assert folder.name in report and "The sweep's own setting (trial 0" in report, report
    result = json.loads((out / "analysis" / "tune" / "tune.json").read_text())
    assert result["studies"][0]["hypervolume"] > 0 and {p.name for p in (out / "analysis" / "tune").iterdir()} >= {"history.png", "tune.md"}


def _dashboard_serves(out, name):
    """`python -m harness.jobs dashboard` serves the study on 127.0.0.1 (optuna-dashboard's API)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness.jobs", "dashboard", "--out-dir", str(out), "--port", str(port)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no answer"
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read())
            except OSError:
                time.sleep(0.5)
        assert [s["study_name"] for s in body["study_summaries"]] == [name]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_killed_mid_trial_is_cleaned_up_and_the_rerun_finishes_the_budget(tmp_path):
    """SIGKILL to the tuning command (not its process group) while its worker trains a trial:
    the worker ends with it (no orphan trains on) and the trial stays RUNNING in the journal.
    The same command again: the janitor marks it FAIL and queues its parameters again; the new
    trial resumes that cell from its checkpoint; the budget ends with exactly `trials` COMPLETE
    and every cell completed."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study, study_name
    from tests.conftest import REPO

    out = tmp_path / "out"
    args = [*TINY_STUDY, "tune.trials=2", "tune.workers=1", "finetune.steps=80", "runtime.checkpoint_every=5", f"out_dir={out}"]
    cfg = compose_config([a for a in args if a != "-m"])
    spec = parse(cfg)
    folder = out / "optuna" / study_name(cfg, spec)
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("cells/*/checkpoints/*/step_*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "no trial started training"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def workers_alive():
        alive = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "harness.tune.worker" in text and str(folder) in text:
                alive.append(cmdline.parent.name)
        return alive

    deadline = time.monotonic() + 120
    while workers_alive():
        assert time.monotonic() < deadline, f"the worker outlived its tuning command: {workers_alive()}"
        time.sleep(0.2)
    running = [t for t in open_study(folder.name, spec, folder).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1

    again = run_cli(["harness", *args], timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = open_study(folder.name, spec, folder).trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2 and states.count(optuna.trial.TrialState.FAIL) == 1, states
    killed = trials[running[0].number]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed.number)
    assert retry.params == killed.params and retry.state == optuna.trial.TrialState.COMPLETE
    assert "resumed stage" in (out / "cells" / retry.user_attrs["cell"] / "train.log").read_text()
    assert all((out / "cells" / t.user_attrs["cell"] / "COMPLETED").exists() for t in trials if t.state == optuna.trial.TrialState.COMPLETE)


def test_a_stopped_cell_is_neither_failed_nor_completed_and_resumes(tmp_path):
    """The observer sees the student at each probe step and may stop the cell (a pruned
    trial): the attempt ends `stopped` with its checkpoint, and running the cell again
    resumes from that step and completes it."""
    from harness.cell import Cell
    from harness.errors import CellStopped
    from harness.runner import run_cell
    from tests.conftest import compose

    cfg = compose(["finetune.steps=6", "eval.recovery_steps=[2,4]", "eval.backbone=none", "tracking.enabled=false"], out_dir=tmp_path)
    seen = []

    class StopAtFour:
        metrics = ["heldout_mse"]

        def __call__(self, step, values):
            seen.append((step, set(values)))
            if step == 4:
                raise CellStopped("pruned at step 4")

    with pytest.raises(CellStopped):
        run_cell(cfg, observer=StopAtFour())
    assert seen == [(2, {"heldout_mse"}), (4, {"heldout_mse"})]
    cell = Cell(cfg)
    attempts = json.loads(cell.path("environment.json").read_text())["attempts"]
    assert [a["ended"] for a in attempts] == ["stopped"]
    assert not cell.done and not cell.path("FAILED").exists()
    assert run_cell(cfg)["metrics"]["heldout_mse"] > 0
    assert "resumed stage finetune from step_00000004.pt" in cell.path("train.log").read_text()
    assert [a["ended"] for a in json.loads(cell.path("environment.json").read_text())["attempts"]] == ["stopped", "completed"]


def test_a_pruned_study_reports_every_trial_at_its_probe_step(tmp_path):
    """A single-objective study with the median pruner: each trial reports its objective at
    the probe step; every trial ends COMPLETE (its cell completed) or PRUNED (its cell's
    attempt stopped, nothing failed), and together they spend the budget."""
    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study

    out = tmp_path / "out"
    args = [*TINY_STUDY, "tune.trials=5", "tune.workers=1", "tune.pruner=median", "eval.recovery_steps=[2]", f"out_dir={out}"]
    done = run_cli(["harness", *args], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (out / "optuna").iterdir()
    spec = parse(compose_config([a for a in args if a != "-m"]))
    trials = open_study(folder.name, spec, folder).trials
    ended = {optuna.trial.TrialState.COMPLETE: "completed", optuna.trial.TrialState.PRUNED: "stopped"}
    assert len(trials) == 5 and all(t.state in ended for t in trials), [t.state for t in trials]
    for t in trials:
        assert set(t.intermediate_values) == {2}, t.intermediate_values
        attempts = json.loads((out / "cells" / t.user_attrs["cell"] / "environment.json").read_text())["attempts"]
        assert [a["ended"] for a in attempts] == [ended[t.state]], (t.number, t.state, attempts)
    assert not list(out.glob("cells/*/FAILED"))


def test_the_tuning_loop_benchmark_runs_and_writes_its_report(tmp_path):
    from harness.bench import tune

    assert tune.main(["--sizes", "3,12", "--dest", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "tune.json").read_text())
    assert set(result["rows"]) == {"3", "12"} and all(r["journal_bytes"] > 0 for r in result["rows"].values())
    assert "| 12 |" in (tmp_path / "tune.md").read_text()


def test_hypervolume_of_known_fronts():
    from analysis.pareto import front_indices, hypervolume

    # a staircase: slabs of 1 × 1, 1 × 2 and 1 × 3
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[1, 3], [2, 2], [3, 1], [3, 3]], [4, 4]) == pytest.approx(6.0)  # a dominated point adds nothing
    assert hypervolume([[5, 1]], [4, 4]) == 0.0  # beyond the reference point
    # two boxes of volume 4 overlapping in a box of volume 2 (inclusion–exclusion)
    assert hypervolume([[0, 1, 0], [1, 0, 0]], [2, 2, 2]) == pytest.approx(6.0)
    assert front_indices([[1, 3], [2, 2], [3, 3], [2, 2]]) == [0, 1]  # dominated and duplicate points dropped


def _study(name, points, se, constraint=None):
    from analysis.tune import Point, StudyView
    from harness.tune.spec import Constraint

    cons = [Constraint("presence/retained", ">=", 80.0)] if constraint else []
    pts = [Point(i, f"c{i}", {}, list(v), [se, se], {"presence/retained": (r, se)} if constraint else {})
           for i, (v, r) in enumerate(points)]
    for p in pts:
        p.feasible = all(c.value({c.metric: p.constraint_metrics[c.metric][0]}) <= 0 for c in cons)
    return StudyView(name, None, name, [("fid", "minimize"), ("presence/erased", "minimize")], cons, pts, {"complete": len(pts)},
                     0, [], None)


def test_fronts_are_compared_beyond_evaluation_noise():
    """A study whose front lies well inside another's wins beyond its bootstrap interval; two
    studies with the same trials do not; an infeasible trial never counts."""
    from analysis.tune import analyse

    good = _study("good", [((1.0, 10.0), 90), ((2.0, 5.0), 90)], se=0.1, constraint=True)
    bad = _study("bad", [((3.0, 30.0), 90), ((4.0, 20.0), 90)], se=0.1, constraint=True)
    twin = _study("twin", [((1.0, 10.0), 90), ((2.0, 5.0), 90)], se=0.1, constraint=True)
    result = analyse([good, bad, twin], {"fid": 5.0, "presence/erased": 40.0}, boots=200)
    hv = {s["study"]: s["hypervolume"] for s in result["studies"]}
    assert hv["good"] == pytest.approx(4 * 30 + 3 * 5)  # slabs of presence 10..40 (fid 1..5) and 5..10 (fid 2..5)
    lo, hi = result["studies"][0]["interval"]
    assert lo < hv["good"] < hi
    assert result["studies"][0]["bias"] == pytest.approx(0.0, abs=1.0)  # no near-ties: the redraws are symmetric
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert pairs[("good", "bad")]["beyond_noise"] and not pairs[("good", "twin")]["beyond_noise"]
    bad.budget = 5  # 2 of 5 trials complete: a study still running is shown, never called better or worse
    pairs = {(p["a"], p["b"]): p for p in analyse([good, bad], {"fid": 5.0, "presence/erased": 40.0}, boots=50)["pairs"]}
    assert pairs[("good", "bad")]["in_progress"]
    cheat = _study("cheat", [((0.1, 0.1), 10)], se=0.1, constraint=True)  # breaks the retained-style constraint
    assert analyse([cheat], {"fid": 5.0, "presence/erased": 40.0}, boots=20)["studies"][0]["hypervolume"] == 0.0


def test_a_trials_reference_cells_are_valid_cells():
    """A bilevel trial's CSD reference is the distilled student: its config must validate as a
    distill cell, not as a member of a study that searches bilevel's keys (the tune block once
    travelled with it and failed every bilevel trial at evaluation: 'distill does not declare K')."""
    from methods.distill import distill_config
    from harness.tune.worker import trial_config
    from harness.validate import validate

    cfg = trial_config(["sweep=tune_bilevel"], ["method.K=7", "method.upper_lr=0.002"])
    assert cfg.method.K == 7 and cfg.tune is None
    validate(distill_config(cfg))


def test_interval_is_reflected_about_the_recorded_hypervolume():
    """A front is a best-of selection: redrawn fronts sit above the recorded one as the recorded
    one sits above the truth. The interval reflects the redraws about the recorded value, so a
    one-sided shift moves it down, not up; and a trial near the constraint's bound keeps its
    recorded feasibility (redrawing it once put a study's interval wholly above its value)."""
    import numpy as np

    from analysis.pareto import interval
    from analysis.tune import analyse, bootstrap

    assert interval(10.0, np.array([11.0, 12.0, 13.0] * 100)) == pytest.approx((7.0, 9.0))
    # many equal trials, each redrawn: the best of them beats the recorded front in nearly every draw
    crowd = _study("crowd", [((2.0, 20.0), 81)] * 12, se=1.0, constraint=True)
    result = analyse([crowd], {"fid": 5.0, "presence/erased": 40.0}, boots=200)
    s = result["studies"][0]
    assert s["bias"] > 0 and s["interval"][0] < s["hypervolume"]
    assert np.percentile(bootstrap([crowd], [5.0, 40.0], 200)[:, 0], 2.5) > s["hypervolume"]  # the plain percentile interval would exclude it
    # retained 81 with se 1 against a bound of 80: feasible as recorded, in every draw
    assert all(bootstrap([crowd], [5.0, 40.0], 50)[:, 0] > 0)


def test_the_reflected_interval_covers_the_truth_more_often():
    """On synthetic studies whose true values are known (analysis.pareto.coverage; 200 studies are
    in the docstring, 30 here), the reflected interval covers the true hypervolume more often
    than the plain percentile interval and at least 80% of the time."""
    from analysis.pareto import coverage

    rates = coverage(studies=30, boots=100, seed=3)
    assert rates["basic"] >= 0.8 and rates["basic"] > rates["percentile"]


def test_redrawn_values_stay_inside_their_metrics_range():
    import numpy as np

    from analysis.pareto import redraw

    rng = np.random.default_rng(0)
    presence = [redraw(rng, "presence/erased", 0.0, 5.0) for _ in range(200)] + [redraw(rng, "csd/stripes", 99.0, 5.0) for _ in range(200)]
    assert min(presence) == 0.0 and max(presence) == 100.0 and all(0.0 <= v <= 100.0 for v in presence)
    assert min(redraw(rng, "fid", 0.1, 1.0) for _ in range(200)) == 0.0
    assert min(redraw(rng, "clip_score", 0.1, 1.0) for _ in range(200)) < 0  # no range declared: not clipped
    assert redraw(rng, "fid", 2.0, None) == 2.0
