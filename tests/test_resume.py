"""A cell killed mid-training resumes from its latest checkpoint and ends with exactly the
weights of an uninterrupted run; a truncated latest checkpoint falls back to the previous."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, SMALL, SMALL_WORLD, run_cli

# eval.backbone=none: an erasing cell would otherwise also run its distilled reference cell.
ARGS = [*SMALL_WORLD, *SMALL, "finetune.steps=30", "runtime.checkpoint_every=5", "tracking.enabled=false", "eval.backbone=none"]


def cell_dir(out):
    (cell,) = (out / "cells").iterdir()
    return cell


# Not a `numerics` test: both runs use the same kernels whichever they are, and the claim is
# equality, not a tolerance (the pinned pass in `make test` is for tolerances).
@pytest.mark.parametrize("method", ["distill", "bilevel"])
def test_killed_cell_resumes_to_identical_weights(tmp_path, method):
    extra = [f"method={method}"] + (["method.K=3", "method.upper_batch_size=2"] if method == "bilevel" else [])
    reference = run_cli(["harness", *ARGS, *extra, f"out_dir={tmp_path / 'straight'}"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", *ARGS, *extra, f"out_dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = list(out.glob("cells/*/checkpoints/*/step_*.pt"))
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpts, "no checkpoint appeared"
    assert not (cell_dir(out) / "COMPLETED").exists(), "the cell finished before it could be killed"

    resumed = run_cli(["harness", *ARGS, *extra, f"out_dir={out}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed stage" in (cell_dir(out) / "train.log").read_text()
    a = load_file(cell_dir(tmp_path / "straight") / "student.safetensors")
    b = load_file(cell_dir(out) / "student.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncated_latest_checkpoint_falls_back(tmp_path, context_for):
    from harness.trainer import Trainer, TrainConfig, checkpoints
    from methods.distill import FinetuneStage

    ctx = context_for()
    stage = FinetuneStage(ctx)
    stage.steps = 10
    folder = tmp_path / "ckpt"
    trainer = Trainer(TrainConfig(checkpoint_every=5, keep_checkpoints=2, progress=False), torch.device("cpu"))
    trainer.fit(stage, folder)
    steps = [s for s, _ in checkpoints(folder)]
    assert steps == [10, 5]
    latest = checkpoints(folder)[0][1]
    latest.write_bytes(latest.read_bytes()[:100])  # a write cut short
    stage.steps = 12
    start, _, _, _ = trainer._load_latest(folder, stage, {
        n: torch.optim.AdamW(s.params, lr=s.lr) for n, s in stage.optimizers().items()})
    assert start == 5
