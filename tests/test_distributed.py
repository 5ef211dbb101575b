"""Data-parallel cells: two CPU processes (torchrun, gloo) train a cell on halves of every
global batch and must end where one process with the same global batch ends."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMALL, SMALL_WORLD, compose, order_of_sums_tolerance, run_cli

TINY = [*SMALL_WORLD, *SMALL, "pruning.ratio=0.3", "tracking.enabled=false", "runtime.checkpoint_every=3"]
# The runs differ only in the order of floating-point sums, which Adam's normalised steps carry
# into the weights (measured: 7e-6 two-stage, 1.1e-5 bilevel); the bound comes from the learning
# rates and step counts of the cell's stages (order_of_sums_tolerance).
METRIC_REL = 1e-3


def weight_tolerance(args: list[str]) -> float:
    cfg = compose(args)
    stages = [(cfg.finetune.lr, cfg.finetune.steps)]
    if cfg.method.name == "two_stage":
        stages.append((cfg.eraser.lr, cfg.eraser.steps))
    if cfg.method.name == "bilevel":
        stages.append((cfg.method.upper_lr, cfg.finetune.steps // cfg.method.K))
    return order_of_sums_tolerance(*stages)


def student(out, cell):
    from safetensors.torch import load_file

    return load_file(out / "cells" / cell / "student.safetensors")


@pytest.mark.numerics
@pytest.mark.parametrize("method", [["method=two_stage"], ["method=bilevel", "method.K=2", "method.upper_params=xattn", "method.x_source=sampler"]])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, method):
    args = [*method, *TINY]
    one = run_cli(["harness", *args, f"out_dir={tmp_path / 'one'}"], env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "harness", *args,
                   f"out_dir={tmp_path / 'two'}"], env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("cell ") == 1  # rank 0 reports, once

    cells = sorted(p.name for p in (tmp_path / "one" / "cells").iterdir())
    assert cells == sorted(p.name for p in (tmp_path / "two" / "cells").iterdir())  # two-stage: its distill cell too
    for cell in cells:
        a, b = student(tmp_path / "one", cell), student(tmp_path / "two", cell)
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < weight_tolerance(args), f"{cell}: weights differ by {worst}"
        ma = json.loads((tmp_path / "one" / "cells" / cell / "results.json").read_text())["metrics"]
        mb = json.loads((tmp_path / "two" / "cells" / cell / "results.json").read_text())["metrics"]
        assert mb == pytest.approx(ma, rel=METRIC_REL, abs=1e-4), cell
        # logged losses are the global batch's (averaged over ranks), written once
        la = [json.loads(x) for x in (tmp_path / "one" / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(x) for x in (tmp_path / "two" / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["step"]) for r in la] == [(r["stage"], r["step"]) for r in lb]
        for ra, rb in zip(la, lb):
            if ra["stage"] != "eval":
                assert rb["values"] == pytest.approx(ra["values"], rel=1e-4, abs=1e-6)


def test_a_batch_that_does_not_split_fails_in_one_line(tmp_path):
    run = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "harness", "method=distill", *TINY,
                   "finetune.batch_size=3", f"out_dir={tmp_path}"], env={"OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    assert "finetune.batch_size=3 is not accepted: a multiple of 2, the number of data-parallel processes" in run.stderr
    assert not (tmp_path / "cells").exists()  # checked before anything started
