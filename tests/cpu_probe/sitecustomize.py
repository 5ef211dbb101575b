"""The per-process half of `python -m tests.cpu_profile`: every Python process started while
the profile runs appends its own CPU seconds (user + system, all its threads, none of its
children's) to $HARNESS_CPU_LOG when it exits, with the test that started it
($PYTEST_CURRENT_TEST, which each process inherits: forked runs, SLURM jobs, workers).

The profile copies this file into the virtual environment's site-packages for the run's
duration only (a PYTHONPATH entry would not reach the processes whose spawner sets
PYTHONPATH). Without $HARNESS_CPU_LOG it does nothing. A process killed by a signal or ended
by os._exit writes nothing: the profile reports what the machine spent beyond the logged
processes as a remainder."""

import atexit as _atexit
import os as _os


def _log_cpu_at_exit() -> None:
    path = _os.environ.get("HARNESS_CPU_LOG")
    if not path:
        return
    try:
        import json
        import resource
        import sys

        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(f"/proc/{_os.getpid()}/cmdline", "rb") as f:
            cmd = [part.decode(errors="replace")[:160] for part in f.read().split(b"\0")[:8] if part]
        line = {"kind": "process", "test": _os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
                "cmd": cmd, "argv": [str(a)[:160] for a in sys.argv[:4]], "cpu_s": usage.ru_utime + usage.ru_stime}
        with open(path, "a") as f:  # one short line per write: appends from many processes stay whole
            f.write(json.dumps(line) + "\n")
    except Exception:  # noqa: BLE001 - a profile must never change how a process ends
        return


if _os.environ.get("HARNESS_CPU_LOG"):
    _atexit.register(_log_cpu_at_exit)
