"""Image-based evaluation in a cell: evaluation sets saved with prompts and seeds, the paper's
metrics with their backbone records, CSD and CP against the distilled model's images."""

from __future__ import annotations

import json

import pytest

from harness.errors import MissingInputError
from harness.runner import run_cell
from harness.validate import validate
from tests.conftest import compose

EVAL = ["eval.neutral_prompts=6", "eval.concept_prompts=3", "tracking.enabled=false"]


def test_cells_measure_images_against_the_distilled_reference(tmp_path, tiny_world_weights):
    world = ["eval.backbone=world", f"eval.weights={tiny_world_weights}", *EVAL]
    bilevel = run_cell(compose(["method=bilevel", "method.upper_batch_size=2", "method.K=2", *world], tmp_path))
    cells = {json.loads((c / "results.json").read_text())["method"]: c for c in (tmp_path / "cells").iterdir()}
    assert set(cells) == {"bilevel", "distill"}  # the reference model was trained for the comparison
    log = (cells["bilevel"] / "train.log").read_text()
    assert log.index("needs cell") < log.index("pruned UNet")  # before the cell began, not inside its evaluation
    distill = json.loads((cells["distill"] / "results.json").read_text())["metrics"]
    m = bilevel["metrics"]
    for key in ("fid", "clip_score", "cmmd", "clip_concept/stripes", "presence/stripes", "csd/stripes", "cp/stripes"):
        assert key in m and key in distill, key
    assert distill["csd/stripes"] == pytest.approx(100.0) and distill["cp/stripes"] == 0.0
    assert m["fid"] >= 0 and m["cmmd"] >= -1e-9
    info = bilevel["metric_info"]
    assert info["fid"]["backbone"] == "world-clip-image-tower" and info["fid"]["scale"] == "world"
    assert info["fid"]["images"] == 6 and info["fid"]["reference_images"] == 256  # eval.reference_images (tests: 256)
    for key in ("se/fid", "se/cmmd", "se/clip_score", "se/presence/stripes", "se/csd/stripes", "se/cp/stripes"):
        assert m[key] > 0, key  # every value carries its evaluation noise
    assert "presence/glow" in m and "presence/checker" not in m  # an erasing cell measures its own concept set
    assert "presence/checker" in distill  # a distill cell measures every concept: it serves any set
    assert info["concept/stripes"]["backbone"] == "world-clip, style-descriptor"
    index = (cells["bilevel"] / "images" / "concept_stripes" / "prompts.jsonl").read_text().splitlines()
    assert len(index) == 3 and "in the style of stripes" in json.loads(index[0])["prompt"]


def test_missing_world_backbones_fail_validation(tmp_path):
    with pytest.raises(MissingInputError, match=f"eval.weights={tmp_path}"):
        validate(compose(["eval.backbone=world", f"eval.weights={tmp_path}"]))


def test_world_evaluation_runs_inside_the_hydra_app(tmp_path, tiny_world_weights):
    from tests.conftest import SMALL, SMALL_WORLD, run_cli

    result = run_cli(["harness", *SMALL_WORLD, *SMALL, *EVAL, "eval.backbone=world", f"eval.weights={tiny_world_weights}",
                      f"out_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'fid':" in result.stdout and "'csd/stripes': 100.0" in result.stdout


def test_image_set_features_are_computed_once_and_follow_the_files(tmp_path):
    import torch

    from harness.imagesets import load_images, save_images

    images = torch.rand(3, 3, 8, 8) * 2 - 1
    save_images(tmp_path / "set", images, ["a", "b", "c"], [1, 2, 3])
    calls = []

    def extract(x):
        calls.append(len(x))
        return x.float().mean((1, 2, 3))

    first = load_images(tmp_path / "set").features("bb-kind", extract)
    again = load_images(tmp_path / "set").features("bb-kind", extract)
    assert calls == [3] and torch.equal(first, again)
    save_images(tmp_path / "set", -images, ["a", "b", "c"], [1, 2, 3])  # the set's files change
    changed = load_images(tmp_path / "set").features("bb-kind", extract)
    assert calls == [3, 3] and not torch.equal(first, changed)


def test_a_cell_computes_the_same_whether_its_reference_ran_just_before_or_earlier(tmp_path, tiny_world_weights):
    """The reference (the distilled student a bilevel cell's CSD compares with) trains before
    the cell starts; the cell is seeded after it, so its weights and metrics do not depend on
    whether the reference ran in the same call or was there already."""
    from safetensors.torch import load_file

    from methods.distill import distill_config

    world = ["eval.backbone=world", f"eval.weights={tiny_world_weights}", *EVAL]
    args = ["method=bilevel", "method.upper_batch_size=2", "method.K=2", *world]
    together = run_cell(compose(args, tmp_path / "together"))
    apart_cfg = compose(args, tmp_path / "apart")
    run_cell(distill_config(apart_cfg))
    apart = run_cell(apart_cfg)
    assert together["metrics"] == apart["metrics"]
    a = load_file(tmp_path / "together" / "cells" / together["cell_id"] / "student.safetensors")
    b = load_file(tmp_path / "apart" / "cells" / apart["cell_id"] / "student.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
