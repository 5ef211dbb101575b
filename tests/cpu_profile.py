"""Where the test suite's CPU goes: per test (its worker's own seconds plus every Python process
it started, SLURM jobs included) and per kind of process.

    python -m tests.cpu_profile                         # make test's main pass, profiled
    python -m tests.cpu_profile -- tests/test_tune.py   # some tests (pytest's arguments)

On a 2-core host the main pass keeps both cores busy (session 25: idle 0 % but for its last
80 s), so its wall time is the CPU it spends over the cores: a test is made cheaper by
spending less CPU, not by waiting less. Seconds here are CPU seconds of a loaded machine
(two busy hyperthreads each run slower than one alone), so compare runs on one host.

How: tests/cpu_probe/sitecustomize.py goes into the virtual environment's site-packages for
the run (removed after it), so every Python process logs its CPU at exit; a pytest plugin
(tests/cpu_probe/plugin.py) logs each test's CPU in its worker. The machine's busy seconds (/proc/stat) minus the logged
ones is the remainder: processes killed by a signal, the SLURM and MySQL daemons, Chromium,
the kernel."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "cpu_probe" / "sitecustomize.py"
# make test's main pass (Makefile): one thread per worker, passive waits, a worker per core and one more
TEST_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m tests.cpu_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1, help="pytest-xdist workers (make test: cores + 1)")
    p.add_argument("--dest", default="outputs/cpu_profile", help="folder for cpu_profile.json and cpu_profile.md")
    p.add_argument("--top", type=int, default=25, help="tests listed in the markdown")
    p.add_argument("--site", default=None, help="folder the probe is copied into for the run (default: this environment's "
                   "site-packages, which every process reads; another folder goes on PYTHONPATH, which reaches only the "
                   "processes whose spawner keeps PYTHONPATH)")
    p.add_argument("pytest_args", nargs="*", help="after --: pytest's own arguments (default: the whole suite)")
    return p.parse_args(argv)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_kind(line: dict) -> str:
    """What a logged process was, from its command line."""
    cmd = " ".join(line["cmd"][1:])
    for pattern, kind in (("cli_forkserver", "forked run of a test (fork server)"), ("submitit.core._submit", "SLURM job"),
                          ("harness.tracker_process", "MLflow helper of a cell"), ("exec(eval(sys.stdin", "pytest worker"), ("-m pytest", "pytest's main process"),
                          ("ipykernel", "notebook kernel"), ("torch.distributed.run", "torchrun"),
                          ("harness.tune.worker", "tuning worker"), ("-m mlflow", "MLflow server or UI")):
        if pattern in cmd:
            return kind
    module = re.search(r"-m (\S+)", cmd)
    return f"python -m {module.group(1)}" if module else " ".join(f"python {cmd}".split())[:48]


def summarise(lines: list[dict], wall: float, busy: float, cores: int) -> dict:
    tests: dict[str, dict] = defaultdict(lambda: {"in_worker_s": 0.0, "processes_s": 0.0, "processes": 0, "wall_s": 0.0})
    kinds: dict[str, dict] = defaultdict(lambda: {"cpu_s": 0.0, "processes": 0})
    for line in lines:
        if line["kind"] == "in worker":
            tests[line["test"]]["in_worker_s"] += line["cpu_s"]
            tests[line["test"]]["wall_s"] += line["wall_s"]
            continue
        kind = process_kind(line)
        if kind == "pytest worker":  # its seconds are the tests' in-worker seconds
            continue
        kinds[kind]["cpu_s"] += line["cpu_s"]
        kinds[kind]["processes"] += 1
        if line["test"]:
            tests[line["test"]]["processes_s"] += line["cpu_s"]
            tests[line["test"]]["processes"] += 1
    for row in tests.values():
        row["cpu_s"] = row["in_worker_s"] + row["processes_s"]
    logged = sum(r["in_worker_s"] for r in tests.values()) + sum(k["cpu_s"] for k in kinds.values())
    return {"wall_s": wall, "cores": cores, "machine_busy_s": busy, "machine_idle_share": max(0.0, 1 - busy / (wall * cores)),
            "logged_s": logged, "remainder_s": busy - logged,
            "tests": dict(sorted(tests.items(), key=lambda kv: -kv[1]["cpu_s"])),
            "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"]))}


def render(result: dict, top: int) -> str:
    out = [f"# Test-suite CPU: {result['wall_s']:.0f} s wall on {result['cores']} cores", "",
           f"Machine busy {result['machine_busy_s']:,.0f} CPU-s (idle {100 * result['machine_idle_share']:.1f} %); "
           f"logged {result['logged_s']:,.0f} CPU-s, the remainder {result['remainder_s']:,.0f} (killed processes, daemons, "
           f"Chromium, the kernel).", "", f"Command: `python -m tests.cpu_profile {' '.join(result['command'])}`", "",
           "| test | CPU-s | in its worker | in processes it started | processes | wall s |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in list(result["tests"].items())[:top]:
        out.append(f"| `{name}` | {r['cpu_s']:.1f} | {r['in_worker_s']:.1f} | {r['processes_s']:.1f} | {r['processes']} | {r['wall_s']:.1f} |")
    out += ["", "| process kind | CPU-s | processes | per process |", "|---|---:|---:|---:|"]
    for kind, k in result["kinds"].items():
        out.append(f"| {kind} | {k['cpu_s']:.1f} | {k['processes']} | {k['cpu_s'] / k['processes']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = Path(args.site) if args.site else purelib
    if args.workers < 1 or not site.is_dir():
        bad = f"--workers={args.workers} is not accepted: at least 1" if args.workers < 1 else f"--site={site} is not a folder"
        print(f"python -m tests.cpu_profile: {bad}", file=sys.stderr)
        return 2
    installed = site / "sitecustomize.py"
    ours = installed.exists() and installed.read_bytes() == PROBE.read_bytes()  # a profile inside a profile
    if installed.exists() and not ours:
        print(f"python -m tests.cpu_profile: {installed} exists already; it cannot be replaced for the run (remove it, or use "
              "another virtual environment)", file=sys.stderr)
        return 2
    dest = Path(args.dest)
    with tempfile.TemporaryDirectory(prefix="cpu-profile-") as tmp:
        log = Path(tmp) / "cpu.jsonl"
        env = {**os.environ, **TEST_ENV, "HARNESS_CPU_LOG": str(log)}
        command = [sys.executable, "-m", "pytest", "-p", "tests.cpu_probe.plugin", "-p", "no:cacheprovider", "-q", *(["-n", str(args.workers), "--dist", "loadfile",
                   "--no-loadscope-reorder"] if args.workers > 1 else []), *args.pytest_args]
        if not ours:  # whole or not at all: a process starting now reads it
            shutil.copyfile(PROBE, Path(tmp) / "sitecustomize.py")
            os.replace(Path(tmp) / "sitecustomize.py", installed)
        path = [str(REPO), *([str(site)] if site != purelib else []), os.environ.get("PYTHONPATH")]
        try:
            busy0, t0 = busy_seconds(), time.perf_counter()
            done = subprocess.run(command, cwd=REPO, env={**env, "PYTHONPATH": os.pathsep.join(p for p in path if p)})
            wall, busy = time.perf_counter() - t0, busy_seconds() - busy0
        finally:
            if not ours:
                installed.unlink()
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    result = {**summarise(lines, wall, busy, os.cpu_count() or 1), "command": sys.argv[1:] if argv is None else list(argv),
              "pytest_exit": done.returncode}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cpu_profile.json").write_text(json.dumps(result, indent=1))
    (dest / "cpu_profile.md").write_text(render(result, args.top))
    print(render(result, args.top))
    print(f"wrote {dest / 'cpu_profile.json'} and {dest / 'cpu_profile.md'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
