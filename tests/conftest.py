"""Shared helpers: small configs, a CLI runner, and a cell context for unit tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every test config is this small: a few hundred renders, a handful of steps.
SMALL_WORLD = ["data.finetune_size=64", "data.concept_size=16", "data.heldout_size=8"]
SMALL = [
    "finetune.batch_size=4",
    "finetune.steps=4",
    "finetune.warmup_steps=0",
    "eraser.steps=2",
    "eraser.batch_size=2",
    "eraser.sampler_steps=3",
    "eval.batch_size=8",
    "eval.sample_steps=2",
    "eval.grid_neutral=1",
    "runtime.progress=false",
]


def compose(overrides: list[str] = (), out_dir: Path | None = None):
    from harness.app import compose_config

    extra = [f"out_dir={out_dir}"] if out_dir else []
    world = [] if "data=coco" in overrides else SMALL_WORLD
    return compose_config(world + SMALL + list(overrides) + extra)


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small():
    return compose


@pytest.fixture
def context_for(tmp_path):
    """Build a CellContext for a small config without running a cell."""
    from harness.context import build_context

    def make(overrides=()):
        cfg = compose(list(overrides), tmp_path / "out")
        folder = tmp_path / "cell"
        folder.mkdir(exist_ok=True)
        return build_context(cfg, folder, require_cell=None)

    return make
