"""The per-test half of `python -m tests.cpu_profile` (a pytest plugin it loads with -p): the
CPU each test's worker spent on it, its own threads only (the processes a test starts log
themselves: sitecustomize.py beside this file)."""

from __future__ import annotations

import json
import os
import resource
import time

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("HARNESS_CPU_LOG")
    if not path:
        yield
        return
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    yield
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "in worker", "test": item.nodeid, "cpu_s": cpu, "wall_s": time.perf_counter() - t0}) + "\n")
