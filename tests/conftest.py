"""Shared helpers: small configs, a CLI runner, and a cell context for unit tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
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
    "eval.neutral_prompts=8",
    "eval.concept_prompts=4",
    "eval.reference_images=256",
    "eval.recovery_steps=[]",  # (sweep=smoke measures recovery at steps beyond these few)
    "runtime.progress=false",
]


# The real smoke sweep (shipped world, every method, image metrics, recovery): run once per
# test session and shared by the sweep and analysis tests; a test that changes it works on a copy.
SMOKE_SWEEP = ["harness", "-m", "sweep=smoke", "runtime.progress=false"]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, worker_id):
    """(out_dir, the finished CompletedProcess). Once per session across pytest-xdist's workers:
    the first to ask runs it under a lock in the session's shared temporary folder, the others
    wait for it and read its record."""
    import fcntl
    import json

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the parent is the whole session's
    out, record = shared / "smoke", shared / "smoke.json"
    with open(shared / "smoke.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            done = run_cli([*SMOKE_SWEEP, f"out_dir={out}"], timeout=1200)
            record.write_text(json.dumps({"args": done.args, "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}))
    return out, subprocess.CompletedProcess(**json.loads(record.read_text()))


# The local SLURM cluster (slurm/cluster/start.sh): one for the whole test session, shared by the
# test_slurm* modules on every pytest-xdist worker. Its folder is made by the session's controller
# process before the workers start (they inherit the variable); the first worker to ask starts the
# cluster there under a lock, and the controller stops it when the session ends (pytest_unconfigure).
SLURM_FOLDER = "HARNESS_TEST_SLURM_DIR"
SLURM_PORT = "16917"  # not the default (16817) of a cluster a developer keeps running by hand
SLURM_KEY = pytest.StashKey[str]()


def pytest_configure(config):
    if not hasattr(config, "workerinput") and SLURM_FOLDER not in os.environ:
        import tempfile

        # short (unix socket paths have a 108-byte limit) and private (0700)
        os.environ[SLURM_FOLDER] = tempfile.mkdtemp(prefix="harness-slurm-")
        config.stash[SLURM_KEY] = os.environ[SLURM_FOLDER]


def pytest_unconfigure(config):
    folder = config.stash.get(SLURM_KEY, None)
    if folder is None:
        return
    import shutil

    if (Path(folder) / "pids").exists():
        subprocess.run([str(REPO / "slurm" / "cluster" / "stop.sh"), folder], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.environ.pop(SLURM_FOLDER, None)


# pytest-xdist hands whole modules to its workers (make test: --dist loadfile), in collection
# order (--no-loadscope-reorder; its default orders by test count, which put a 1-test, 3-minute
# module last). The longest modules come first, so that none starts near the end and leaves
# the other worker idle: seconds inside a full suite run (session 13), longest first. Only
# the order changes; a module not named keeps its place after these.
LONGEST_FIRST = ("test_slurm", "test_bench", "test_slurm_requeue", "test_slurm_paper", "test_analysis", "test_tune",
                 "test_slurm_tune", "test_tracking", "test_propagation", "test_resume", "test_distributed")


def _distributed_test_by_test(config) -> bool:
    """--dist load, as the main process has it (xdist resets `dist` in its workers, which
    collect; the main process's argv reaches them as workerinput["mainargv"])."""
    argv = getattr(config, "workerinput", {}).get("mainargv", [])
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--dist=")]
    given += [b for a, b in zip(argv, argv[1:]) if a == "--dist"]
    return config.getoption("dist", "no") == "load" or given[-1:] == ["load"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's tests keep their order
    if _distributed_test_by_test(config):
        # test by test (make test's pinned pass): xdist hands out consecutive tests two at a
        # time, so the modules' tests are dealt out in turn (each module's first, then each
        # one's second, ...): a module's long tests go to different workers, side by side
        seen, turn = Counter(), {}
        for item in items:
            turn[item] = seen[item.path]
            seen[item.path] += 1
        items.sort(key=lambda item: turn[item])


@pytest.fixture(scope="session")
def cluster():
    """The environment that reaches the session's local SLURM cluster (SLURM_CONF), or the one
    SLURM_CONF already points at if that one answers."""
    import fcntl

    if os.environ.get("SLURM_CONF") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        return {"SLURM_CONF": os.environ["SLURM_CONF"]}
    folder = Path(os.environ[SLURM_FOLDER])
    with open(folder / "start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # start.sh returns at once when the cluster in the folder is already up
        started = subprocess.run([str(REPO / "slurm" / "cluster" / "start.sh"), str(folder)],
                                 env={**os.environ, "HARNESS_SLURM_PORT": SLURM_PORT}, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    return {"SLURM_CONF": str(folder / "etc" / "slurm.conf")}


def order_of_sums_tolerance(*stages: tuple[float, int], fraction: float = 0.05) -> float:
    """Largest weight difference allowed between two trainings that differ only in the order of
    floating-point sums (data-parallel ranks vs one process, other thread counts or kernels).

    Adam moves a weight by about its learning rate per step (|m̂ / (√v̂ + ε)| ≈ 1), so the
    (lr, steps) of each stage bound how far any weight can travel: Σ lr × steps. A run that
    computes something else (a wrong share of the batch, other noise) uses all of that travel
    (measured: 4e-3 after 4 steps at 5e-4), while the order of sums only flips the sign of
    updates whose gradient is near zero, which moved weights by 7e-6 to 1.2e-5 here on AVX2 and
    AVX-512 kernels. 5% of the travel lies between the two whatever the machine."""
    return fraction * sum(lr * steps for lr, steps in stages)


def real_scale(overrides) -> bool:
    """COCO data: asked for, or chosen by a sweep's defaults (sweeps/paper_sd21.yaml, or a
    sweep whose defaults list names such a sweep)."""
    import yaml

    def coco(sweep: str) -> bool:
        path = REPO / "sweeps" / f"{sweep}.yaml"
        if not path.is_file():
            return False
        text = path.read_text()
        named = [d for d in (yaml.safe_load(text) or {}).get("defaults", []) if isinstance(d, str) and d != "_self_"]
        return "override /data: coco" in text or any(coco(d) for d in named)

    return "data=coco" in overrides or any(coco(o.split("=", 1)[1]) for o in overrides if o.startswith("sweep="))


def compose(overrides: list[str] = (), out_dir: Path | None = None):
    from harness.compose import compose_config

    extra = [f"out_dir={out_dir}"] if out_dir else []
    world = [] if real_scale(overrides) else SMALL_WORLD
    return compose_config(world + SMALL + list(overrides) + extra)


def fails_in_one_line(args: list[str], tmp_path: Path, capsys, *wanted: str) -> None:
    """`harness.app.check(args)` (what `python -m harness` runs first) exits 2 with one line
    `error: ...` holding every `wanted` text, and writes nothing (the out_dir it is given, put
    first so a case's own out_dir wins, stays absent)."""
    from harness.app import check

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        check([f"out_dir={out}", *args])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(w in lines[0] for w in wanted), lines[0]
    assert not out.exists()


_forkserver = None


def cli_forkserver():
    """This worker's fork server (tests/cli_forkserver.py), started on first use; None when
    HARNESS_TEST_FRESH_PROCESSES=1 or it could not start."""
    global _forkserver
    from tests import cli_forkserver as fs

    if os.environ.get(fs.FRESH) == "1":
        return None
    if _forkserver is None:
        import atexit

        _forkserver = fs.Server(REPO)
        atexit.register(_forkserver.stop)
    return _forkserver if _forkserver.alive() else None


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m *args`, its output captured: forked from this worker's fork server, which has
    the heavy libraries imported (tests/cli_forkserver.py), or in a fresh process where a fork
    cannot give the run what a fresh process would."""
    from tests.cli_forkserver import forkable

    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    server = cli_forkserver()
    if server is not None and forkable(server.env, env):
        return server.run(args[0], args[1:], cwd, env, timeout)
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


@pytest.fixture(scope="session")
def sd21_dir(tmp_path_factory):
    """A Stable-Diffusion-2.1-shaped pipeline folder at toy size (diffusers layout, latent
    space, v-prediction, a CLIP BPE tokenizer), written with save_pretrained: it exercises the
    real loading path of `model=sd21` without the 5 GB checkpoint."""
    return write_sd21(tmp_path_factory.mktemp("sd21"))


def write_sd21(root: Path, max_length: int = 32) -> Path:
    """The toy SD 2.1 folder of `sd21_dir` under `root`; `max_length`: the text encoder's
    positions (its tokenizer is character-level: a world prompt takes ~40 tokens)."""
    from harness.models.random_pipeline import write_pipeline

    return write_pipeline(
        root,
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                 sample_size=16),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        max_length=max_length)


@pytest.fixture(scope="session")
def tiny_world_weights(tmp_path_factory):
    """The world-model recipe run for a few steps (weights exist; their quality does not matter)."""
    import torch

    from harness.world.build import SCALES, build

    out = tmp_path_factory.mktemp("world")
    build(out, SCALES["tiny"], torch.device("cpu"))
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, sd21_dir):
    """A transformers CLIPModel directory at toy size (the layout of openai/clip-vit-*)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.from_pretrained(sd21_dir / "tokenizer")
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32,
                     "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(root)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(root)
    return root
