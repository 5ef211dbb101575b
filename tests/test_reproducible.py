"""The reproducible mode (`runtime.reproducible=true`, harness/numerics.py): one cell re-run
gives the committed numbers of its CPU's vendor bitwise (made on an AVX-512 Intel Xeon and an
AVX-512 AMD EPYC with the kernels pinned to AVX2 and 2 threads: the pin is what lets an AVX2-only
CPU of the vendor give the same; across vendors the bits differ), and every cell records
what decided its numbers, in environment.json and in MLflow.

The committed values (tests/data/reference_cell.json, made on an Intel Xeon; reference_cell.amd.json
on an AMD EPYC) change when the cell's computation does
(its config, the code of a method or of the evaluation): regenerate them, in the reproducible
mode, with `python -m tests.test_reproducible`."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

def reference_file() -> Path:
    """This CPU vendor's committed values: the pinned mode gives the same bits on every CPU of
    one vendor, not across vendors (harness/numerics.py: VENDOR_LABELS)."""
    from harness.numerics import VENDOR_LABELS, cpu_vendor

    named = VENDOR_LABELS.get(cpu_vendor(), cpu_vendor())
    return REPO / "tests" / "data" / (f"reference_cell.{named}.json" if named else "reference_cell.json")


REFERENCE = reference_file()
ARGS = ["sweep=smoke", "method=distill", "runtime.reproducible=true", "runtime.progress=false"]
COMMAND = "python -m harness " + " ".join(ARGS)


def summary(out: Path) -> dict:
    (cell,) = (out / "cells").iterdir()
    results = json.loads((cell / "results.json").read_text())
    return {
        "command": COMMAND,
        "cell": cell.name,
        "kernel_set": results["kernel_set"],
        "student_sha256": hashlib.sha256((cell / "student.safetensors").read_bytes()).hexdigest(),
        "metrics": results["metrics"],
    }


def run_reference(out: Path):
    return run_cli(["harness", *ARGS, f"out_dir={out}"], timeout=900)


def test_a_reproducible_cell_gives_the_committed_values_bitwise(tmp_path):
    run = run_reference(tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    got, want = summary(tmp_path), json.loads(REFERENCE.read_text())
    assert got["cell"] == want["cell"], "the reference cell's identity changed: regenerate with python -m tests.test_reproducible"
    pinned = "cpu AVX2 mkl-cnr-compatible nodnnl t2"
    assert got["kernel_set"] == want["kernel_set"] and want["kernel_set"].startswith(pinned)
    assert got["metrics"] == want["metrics"]  # every float, exactly
    assert got["student_sha256"] == want["student_sha256"]

    # what decided the numbers, on disk and in MLflow
    env = json.loads((tmp_path / "cells" / got["cell"] / "environment.json").read_text())
    numerics = env["numerics"]
    assert numerics["cpu_capability"] == "AVX2" and numerics["threads"] == 2 and numerics["deterministic"] is True
    assert numerics["onednn_enabled"] is False
    assert numerics["pinned_env"]["ATEN_CPU_CAPABILITY"] == "avx2" and env["kernel_set"] == want["kernel_set"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
    tags = run_.data.tags
    assert tags["harness.kernel_set"] == want["kernel_set"] and tags["numerics.cpu_capability"] == "AVX2"
    assert tags["numerics.threads"] == "2" and tags["numerics.pinned"] == "True"


def test_an_unpinned_process_cannot_run_a_reproducible_cell(monkeypatch):
    """Kernels are chosen when each library first runs: a process not started pinned (a cell
    run in-process, a job without the exports) refuses, naming what is missing."""
    from harness import numerics

    for key in numerics.pin_environment():
        monkeypatch.delenv(key, raising=False)
    why = numerics.check(True)
    assert why and "ATEN_CPU_CAPABILITY=avx2" in why and "python -m harness" in why
    assert numerics.check(False) is None
    monkeypatch.setattr(numerics.os, "environ", {**numerics.os.environ, **numerics.pin_environment()})
    assert numerics.is_pinned(numerics.os.environ)


def test_make_test_pins_what_the_reproducible_mode_pins():
    from harness import numerics

    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if x.startswith("PINNED :="))
    assert dict(kv.split("=", 1) for kv in line.split(":=", 1)[1].split()) == numerics.CPU_PIN


@pytest.mark.numerics  # (so the pinned pass checks the label under the pin as well)
def test_every_cell_records_its_kernel_set(context_for):
    """Without the mode, a cell records the kernels it really ran (here: this process's, which
    `make test` runs both with and without the AVX2 pin in its environment)."""
    import os

    import torch

    from harness.env import environment

    env = environment("cpu")
    assert env["numerics"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    blas = env["numerics"]["blas"]
    if blas == "mkl" and os.environ.get("MKL_CBWR"):  # MKL's conditional-numerical-reproducibility branch, as pinned
        blas = "mkl-cnr-" + os.environ["MKL_CBWR"].split(",")[0].lower()
    dnnl = "" if torch.backends.mkldnn.enabled else " nodnnl"  # the mode turns oneDNN off
    vendor = env["numerics"]["cpu_vendor"]
    named = {"GenuineIntel": "", "AuthenticAMD": "amd"}.get(vendor, vendor or "")
    assert env["kernel_set"] == f"cpu {env['numerics']['cpu_capability']} {blas}{dnnl} t{torch.get_num_threads()}" + (f" {named}" if named else "")
    assert env["cpu"] and env["numerics"]["torch"] == torch.__version__


if __name__ == "__main__":  # regenerate the committed values (in the reproducible mode, whatever this CPU)
    with tempfile.TemporaryDirectory() as tmp:
        done = run_reference(Path(tmp))
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        REFERENCE.write_text(json.dumps(summary(Path(tmp)), indent=1) + "\n")
    print(f"wrote {REFERENCE}")
