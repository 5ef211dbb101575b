"""The tests' fork server for CLI runs (tests/cli_forkserver.py): a run forked from it answers as
a fresh `python -m` process does, a run it cannot serve faithfully goes to a fresh process,
and a run past its timeout is killed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli_forkserver import forkable
from tests.conftest import REPO, cli_forkserver


def fresh(args: list[str], cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def server():
    server = cli_forkserver()
    if server is None:
        pytest.skip("no fork server: HARNESS_TEST_FRESH_PROCESSES=1, or torch started threads at import (OMP_NUM_THREADS unset)")
    return server


@pytest.mark.parametrize("args", [
    ["harness", "method=nope"],  # fails its check: exit 2, one line on stderr
    ["harness.jobs", "--help"],  # argparse's help on stdout, exit 0
    ["analysis.tables", "--out-dir", "/nonexistent/store"],  # a tool's one-line failure
    ["harness.no_such_module"],  # Python's own one line, exit 1
], ids=["bad-method", "help", "missing-store", "no-module"])
def test_a_forked_run_answers_as_a_fresh_process(server, tmp_path, args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    forked = server.run(args[0], args[1:], tmp_path, env, timeout=300)
    alone = fresh(args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert forked.args == [sys.executable, "-m", *args]


def test_the_run_gets_its_own_environment_and_directory(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_FORKSERVER_PROBE": "seen"}
    code = "import os, sys; print(os.getcwd(), os.environ['HARNESS_FORKSERVER_PROBE'], sys.path[0], sys.argv[1:])"
    (tmp_path / "probe_module.py").write_text(code)
    done = server.run("probe_module", ["a", "b=1"], tmp_path, env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 3) == [str(tmp_path), "seen", str(tmp_path), "['a', 'b=1']\n"]


@pytest.mark.parametrize("body, code, last", [
    ("raise ValueError('broken')", 1, "ValueError: broken"),
    ("import sys; sys.exit('stopped')", 1, "stopped"),
    ("import atexit, sys; atexit.register(lambda: print('atexit ran', flush=True)); sys.stdout.write('unflushed')", 0, ""),
    # a pool's worker thread is not a daemon: it ends through threading's exit hooks, before the join
    # (kept alive by a module, as a library's pool is: a pool collected with the run's globals ends anyway)
    ("import concurrent.futures as f; f.kept = f.ThreadPoolExecutor(1); f.kept.submit(print, 'pooled')", 0, ""),
], ids=["exception", "exit-message", "atexit", "thread-pool"])
def test_a_run_ends_as_a_fresh_interpreter_ends(server, tmp_path, body, code, last):
    (tmp_path / "ending.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    forked = server.run("ending", [], tmp_path, env, timeout=60)
    alone = subprocess.run([sys.executable, "-m", "ending"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert forked.returncode == alone.returncode == code
    assert forked.stdout == alone.stdout
    assert forked.stderr.strip().splitlines()[-1:] == alone.stderr.strip().splitlines()[-1:] == ([last] if last else [])


def test_a_run_past_its_timeout_is_killed(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with pytest.raises(subprocess.TimeoutExpired):
        server.run("timeit", ["-n", "1000000000000", "pass"], tmp_path, env, timeout=1)
    assert server.alive()  # and it serves the next run
    assert server.run("timeit", ["-n", "1", "pass"], tmp_path, env, timeout=60).returncode == 0


def test_a_variable_read_at_import_sends_the_run_to_a_fresh_process():
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": "/repo"}
    assert forkable(base, {**base, "MLFLOW_TRACKING_URI": "sqlite:///x.db"})  # read by the harness, after the fork
    assert not forkable(base, {**base, "OMP_NUM_THREADS": "2"})
    assert not forkable(base, {**base, "ATEN_CPU_CAPABILITY": "avx2"})  # the AVX2 pin
    assert not forkable(base, {k: v for k, v in base.items() if k != "PYTHONPATH"})
