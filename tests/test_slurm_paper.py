"""sweep=paper_sd21 end to end at toy size on the local SLURM cluster: SD 2.1's layout, COCO-layout
data, artist folders, the real metric backbones, 2 (fake) GPUs per cell."""

from __future__ import annotations

import json

import pytest

from harness.data.real import write_coco
from tests.conftest import run_cli
from tests.slurm_support import ON_SLURM, needs_root, submissions, sweep_cells

pytestmark = needs_root


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch hub folder holding clean-fid's legacy_pytorch Inception at random weights (its
    architecture and file name; its values do not matter at toy size)."""
    import cleanfid.inception_pytorch as fid_inception
    import torch
    from torchvision.models.inception import Inception3

    from harness.metrics.backbones import PYTORCH_FID_WEIGHTS

    built = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(Inception3, "load_state_dict", lambda self, *a, **k: built.append(self))
        torch.manual_seed(0)
        fid_inception.fid_inception_v3()
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / PYTORCH_FID_WEIGHTS
    path.parent.mkdir(parents=True)
    torch.save(built[0].state_dict(), path)
    return home


def real_scale_inputs(root, clip_dir, csd_path, torch_home, monkeypatch) -> list[str]:
    """COCO 2017 in the authors' layout, a folder of images per artist, and a FID/CMMD
    reference prepared from the val images: the overrides that point paper_sd21 at them."""
    import numpy as np
    from PIL import Image

    from harness.metrics.prepare import main as prepare

    rng = np.random.default_rng(0)
    coco = write_coco(root / "coco", {"train": 6, "val": 6}, lambda split, i: Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)))
    concepts = root / "artists"
    for artist in ("van_gogh", "monet", "picasso"):
        (concepts / artist).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(concepts / artist / f"{i}.png")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    reference = root / "ref"
    assert prepare(["--images", str(coco / "images" / "val2017"), "--out", str(reference), "--resolution", "16",
                    "--clip", str(clip_dir)]) == 0
    return [f"data.root={coco}", f"data.concept_source={concepts}", f"eval.real.reference={reference}",
            f"eval.real.clip={clip_dir}", f"eval.real.cmmd_clip={clip_dir}", f"eval.real.csd={csd_path}"]


def test_the_paper_preset_runs_end_to_end_at_toy_size_on_slurm(cluster, sd21_dir, tiny_clip_dir, torch_home, tmp_path, monkeypatch):
    """sweep=paper_sd21 as a user runs it, at toy size: every method of the preset, SD 2.1's
    layout (latent space, v-prediction, PNDM), COCO-layout data and artist folders, the real
    metric backbones (Inception, CLIP, CSD), on the local SLURM cluster with 2 (fake) GPUs per
    cell: data-parallel where the batches split, one GPU for ESD's batch of 1 and the teacher."""
    from tests.test_real_backbones import as_openai_visual, tiny_vision

    import torch

    state = {f"module.backbone.{k}": v for k, v in as_openai_visual(tiny_vision()).items()}
    state["module.last_layer_style"], state["module.last_layer_content"] = torch.randn(64, 24), torch.randn(64, 24)
    csd = tmp_path / "csd.pth"
    torch.save({"model_state_dict": state}, csd)
    inputs = real_scale_inputs(tmp_path, tiny_clip_dir, csd, torch_home, monkeypatch)
    out = tmp_path / "out"
    toy = [f"model.path={sd21_dir}", "model.resolution=16", "data.heldout_size=4", "finetune.steps=20",
           "finetune.batch_size=4", "eraser.steps=2", "eraser.sampler_steps=3", "eval.neutral_prompts=4",
           "eval.concept_prompts=2", "eval.sample_steps=3", "eval.batch_size=8", "eval.grid_neutral=1"]
    # one of the preset's two ratios (a command-line value wins over every grid's): each method
    # once, which is what the test is about; the second ratio adds 5 jobs of the same kinds
    args = ["harness", "-m", "sweep=paper_sd21", "pruning.ratio=0.25", *inputs, *toy, *ON_SLURM, "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=2", "hydra.launcher.wait=true", "tracking.enabled=false",
            "runtime.progress=false", f"out_dir={out}"]
    done = run_cli(args, env={**cluster, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(torch_home)}, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    cells = sweep_cells(out)
    assert len(cells) == 6 and all((out / "cells" / c / "COMPLETED").exists() for c in cells)
    by_gpus = {}
    for c in cells:
        env_json = json.loads((out / "cells" / c / "environment.json").read_text())
        results = json.loads((out / "cells" / c / "results.json").read_text())
        by_gpus.setdefault((results["method"], env_json["processes"]), 0)
        by_gpus[(results["method"], env_json["processes"])] += 1
        assert {"fid", "clip_score", "cmmd"} <= results["metrics"].keys(), c
        assert results["metric_info"]["fid"]["backbone"] == "inception-legacy_pytorch"
        if results["method"] not in ("teacher", "distill"):
            assert all(f"csd/{a}" in results["metrics"] for a in ("van_gogh", "monet", "picasso")), c
    # the distill cells ran in their own jobs, on 2 GPUs: the erasing cells' arrays waited for them
    assert by_gpus == {("teacher", 1): 1, ("distill", 2): 1, ("two_stage", 1): 2, ("bilevel", 2): 2}, by_gpus
    assert sorted(len(sub["cells"]) for sub in submissions(out)) == [1, 1, 2, 2]  # by GPU count, references first
