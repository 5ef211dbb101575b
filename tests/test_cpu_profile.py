"""python -m tests.cpu_profile: a profiled pytest run attributes each test's CPU, in its worker
and in the processes it starts, and removes its probe after."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

CHILD_CPU_S = 0.3  # what the profiled test's child spends, by its own CPU clock: any machine's speed


def test_a_profiled_run_attributes_a_childs_cpu_to_the_test_that_started_it(tmp_path):
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_spends.py").write_text(f'''
import subprocess, sys

def test_starts_a_busy_child():
    subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < {CHILD_CPU_S}: pass"], check=True)

def test_stays_in_its_worker():
    assert sum(range(10_000)) > 0
''')
    dest = tmp_path / "profile"
    # the probe goes in a folder of its own (on PYTHONPATH), not the environment the other tests share
    site = tmp_path / "site"
    site.mkdir()
    done = subprocess.run([sys.executable, "-m", "tests.cpu_profile", "--workers", "1", "--dest", str(dest), "--site", str(site),
                           "--", f"--rootdir={tests}", str(tests)],  # test ids from here, whatever lies above (an ini in /tmp)
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((dest / "cpu_profile.json").read_text())
    busy, idle = result["tests"]["test_spends.py::test_starts_a_busy_child"], result["tests"]["test_spends.py::test_stays_in_its_worker"]
    assert busy["processes"] == 1 and busy["processes_s"] >= CHILD_CPU_S, busy
    assert idle["processes"] == 0 and idle["in_worker_s"] >= 0, idle
    (child,) = [k for k in result["kinds"] if k.startswith("python -c import time while")]
    assert result["kinds"][child]["processes"] == 1 and "pytest's main process" in result["kinds"], result["kinds"]
    assert result["logged_s"] >= CHILD_CPU_S and "test_starts_a_busy_child" in (dest / "cpu_profile.md").read_text()
    assert not (site / "sitecustomize.py").exists()  # removed after the run


def test_a_bad_request_fails_in_one_line_before_anything_runs(tmp_path, capsys):
    from tests.cpu_profile import main

    for args, said in ((["--workers", "0"], "--workers=0 is not accepted: at least 1"),
                       (["--site", str(tmp_path / "nowhere")], f"--site={tmp_path / 'nowhere'} is not a folder")):
        assert main([*args, "--dest", str(tmp_path / "profile")]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [f"python -m tests.cpu_profile: {said}"], err
        assert not (tmp_path / "profile").exists()
