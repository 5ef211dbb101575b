"""The SLURM bookkeeping without a cluster: sacct parsing, which cells count as in flight,
adopting the jobs of an interrupted submission, and code snapshots."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from harness.launch import records
from harness.launch.snapshot import MARKER, freeze
from tests.conftest import REPO


def test_sacct_lines_are_parsed_with_folded_pending_tasks():
    text = "12_0|COMPLETED\n12_[1-3,5%4]|PENDING\n13|CANCELLED by 0\n14_4|RUNNING\n"
    assert records.parse_sacct(text) == {
        "12_0": "COMPLETED", "12_1": "PENDING", "12_2": "PENDING", "12_3": "PENDING", "12_5": "PENDING",
        "13": "CANCELLED", "14_4": "RUNNING",
    }


def submission(tmp_path, cells, job_ids=None, age_s=0.0):
    sub = records.Submission.create(tmp_path, "sweep-1", cells)
    sub.created -= age_s
    if job_ids:
        sub.submitted(job_ids)
    else:
        sub.save()
    return sub


def test_in_flight_cells_are_those_with_live_or_just_submitted_jobs(tmp_path, monkeypatch):
    submission(tmp_path, ["done", "busy"], ["7_0", "7_1"], age_s=1000)
    submission(tmp_path, ["fresh", "stale"], ["8_0", "8_1"], age_s=0)
    submission(tmp_path, ["sending"])  # sbatch under way
    states = {"7_0": "COMPLETED", "7_1": "RUNNING", "8_1": "FAILED"}
    monkeypatch.setattr(records, "job_states", lambda ids: {j: states[j] for j in ids if j in states})
    # "fresh" (8_0) is unknown to sacct but 0 s old: queued; "done" ended; "stale" failed
    assert records.in_flight(records.load_submissions(tmp_path)) == {"busy", "fresh", "sending"}


def test_reconcile_adopts_jobs_found_by_name_and_abandons_old_empty_submissions(tmp_path, monkeypatch):
    lost = submission(tmp_path, ["a", "b"])
    empty = submission(tmp_path, ["c"], age_s=records.ABANDON_AFTER_S + 1)
    young = submission(tmp_path, ["d"])
    found = {lost.job_name: ["21_0", "21_1"]}
    monkeypatch.setattr(records, "find_jobs_named", lambda name, since, count: found.get(name))
    subs = {s.token: s for s in records.reconcile(tmp_path)}
    assert subs[lost.token].state == "submitted" and subs[lost.token].job_ids == {"a": "21_0", "b": "21_1"}
    assert subs[empty.token].state == "abandoned"
    assert subs[young.token].state == "submitting"  # may still be on its way: its cells stay in flight
    assert records.latest_jobs(records.load_submissions(tmp_path)) == {"a": ("21_0", subs[lost.token]), "b": ("21_1", subs[lost.token])}


def git_repo(path):
    (path / "harness").mkdir(parents=True)
    (path / "harness" / "code.py").write_text("VALUE = 1\n")
    (path / "weights.bin").write_bytes(os.urandom(2 << 20))
    (path / ".gitignore").write_text("outputs/\n")
    (path / "outputs").mkdir()
    (path / "outputs" / "big.pt").write_bytes(b"x")
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def test_a_snapshot_copies_the_tree_links_large_files_and_is_shared_while_unchanged(tmp_path):
    from harness.env import git_state

    repo = tmp_path / "repo"
    commit = git_repo(repo)
    first = freeze(tmp_path / "code", repo)
    snap = tmp_path / "code" / first["digest"]
    assert first["commit"] == commit and first["dirty"] is False and first["path"] == str(snap)
    assert (snap / "harness" / "code.py").read_text() == "VALUE = 1\n"
    assert not (snap / "outputs").exists()  # ignored files stay out
    assert os.stat(snap / "weights.bin").st_ino == os.stat(repo / "weights.bin").st_ino
    assert git_state(snap) == {"commit": commit, "dirty": False, "snapshot": str(snap)}
    made = (snap / MARKER).stat().st_mtime_ns
    time.sleep(0.01)
    assert freeze(tmp_path / "code", repo) == first and (snap / MARKER).stat().st_mtime_ns == made

    (repo / "harness" / "code.py").write_text("VALUE = 2\n")  # an edit after submission
    second = freeze(tmp_path / "code", repo)
    assert second["digest"] != first["digest"] and second["dirty"] is True
    assert (snap / "harness" / "code.py").read_text() == "VALUE = 1\n"  # the first stays as it was
    assert "VALUE = 2" in (tmp_path / "code" / second["digest"] / "DIFF.patch").read_text()
    assert json.loads((tmp_path / "code" / second["digest"] / MARKER).read_text())["commit"] == commit


def test_the_requeue_race_ends_the_attempt_as_requeued_not_failed(tmp_path, monkeypatch):
    """submitit's requeue runs `scontrol requeue`, which makes SLURM kill the job: its SIGTERM
    can reach that scontrol child before it returns (seen on the local cluster), so check_call
    raises although the job is requeued. The attempt ends 'requeued', with no FAILED marker;
    the same error without the scheduler's signal, or a refused requeue, is a failure."""
    from harness import runner
    from harness.cell import Cell
    from harness.launch import requeue
    from tests.conftest import compose

    killed = subprocess.CalledProcessError(-15, ["scontrol", "requeue", "18"])
    refused = subprocess.CalledProcessError(1, ["scontrol", "requeue", "18"])
    cases = [(True, killed, "requeued"), (True, SystemExit(-1), "requeued"), (True, refused, "failed"),
             (False, killed, "failed"), (False, SystemExit(-1), "failed")]
    for i, (signalled, exc, ended) in enumerate(cases):
        cfg = compose(["tracking.enabled=false"], out_dir=tmp_path / str(i))
        monkeypatch.setattr(requeue, "_pending", signalled)

        def interrupted(*args, exc=exc):
            raise exc

        monkeypatch.setattr(runner, "_train_and_evaluate", interrupted)
        cell = Cell(cfg)
        try:
            runner.run_cell(cfg)
        except BaseException as raised:  # noqa: BLE001 - the cell re-raises what ended it
            assert raised is exc
        else:
            raise AssertionError("the cell swallowed what ended it")
        attempt = json.loads(cell.path("environment.json").read_text())["attempts"][-1]
        assert attempt["ended"] == ended, (signalled, exc)
        assert cell.path("FAILED").exists() == (ended == "failed"), (signalled, exc)


def test_the_requeue_hook_imports_nothing_so_a_signal_during_start_up_requeues(tmp_path):
    """submitit calls a job's `checkpoint` from its signal handler, which can run while the job
    is still importing torch and the runner (under load start-up outlasts the 30-60 s before a
    2-minute job's warning). An import there re-entered the half-imported runner, raised
    AttributeError and failed the job instead of requeueing it (a red CI run). In a process as
    submitit's job starts it (submitit imported, the job's pickle loaded), the hooks of both
    job kinds load no module and mark the requeue."""
    script = """
import sys
import submitit
from harness.launch import requeue
from harness.launch.job import CellJob, TuneWorkerJob
before = set(sys.modules)
assert not requeue.pending()
for job in (CellJob({}, "c", "."), TuneWorkerJob("f", 0, ".")):
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function is job
assert requeue.pending()
print(sorted(set(sys.modules) - before))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the requeue hook imported {done.stdout.strip()}"


def test_a_job_that_died_without_a_marker_is_explained_by_its_tasks_logs(tmp_path):
    """No FAILED marker (the process died before the cell's error handling): the failing rank's
    own error line, not rank 0's echo of it, with the log's path."""
    folder = tmp_path / "32_3"
    folder.mkdir()
    (folder / "32_3_0_log.err").write_text("RuntimeError: [gloo] Connection closed by peer\n")
    (folder / "32_3_1_log.err").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
        "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address.\n"
        "submitit ERROR (2026-12-01 07:00:00,000) - Submitted job triggered an exception\n")
    why = records.job_error(tmp_path / "%j", "32_3")
    assert why.startswith("torch.distributed.DistNetworkError: The server socket") and "32_3_1_log.err" in why
    (folder / "32_3_1_log.err").write_text("all fine\n")
    assert records.job_error(tmp_path / "%j", "32_3").startswith("RuntimeError: [gloo]")
    assert records.job_error(tmp_path / "%j", "33") is None


def test_the_tasks_of_a_job_meet_on_one_port_outside_the_ephemeral_range(monkeypatch):
    """Every task of a job derives the same rendezvous port from the job id; a requeued attempt
    another; the port lies below the kernel's ephemeral range, where outgoing connections draw theirs."""
    import submitit

    from harness import distributed

    low = 32768
    with contextlib.suppress(OSError):
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = {distributed.rendezvous_port(f"32_{i}", a) for i in range(50) for a in range(2)}
    assert len(ports) > 90 and all(1024 <= p < low for p in ports)
    assert distributed.rendezvous_port("32_3", 0) == distributed.rendezvous_port("32_3", 0)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "32", "SLURM_ARRAY_TASK_ID": "3",
             "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_RESTART_COUNT": "1"}
    for key in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "")  # recorded, so that what the export sets is removed afterwards
        monkeypatch.delenv(key)
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert submitit.JobEnvironment().job_id == "32_3"
    distributed.from_slurm_tasks()
    assert os.environ["MASTER_PORT"] == str(distributed.rendezvous_port("32_3", 1))
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("1", "2", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29555")  # the user's choice wins
    distributed.from_slurm_tasks()
    assert os.environ["MASTER_PORT"] == "29555"
