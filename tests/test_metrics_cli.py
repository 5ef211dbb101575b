"""`python -m harness.metrics` on folders of images, with the world's backbones."""

from __future__ import annotations

import json

import pytest
import torch

from harness.imagesets import load_images, save_images
from harness.metrics.__main__ import compute, main
from harness.world.render import Scene, render


def styled_set(folder, style, n=12):
    scenes = [Scene(s, c, "large", 0.5, 0.5, style) for s in ("circle", "square", "triangle") for c in ("red", "blue", "green", "cyan")][:n]
    images = torch.stack([torch.from_numpy(render(sc)).permute(2, 0, 1).float() / 127.5 - 1 for sc in scenes])
    return save_images(folder, images, [sc.caption() for sc in scenes], list(range(n)))


def test_image_sets_round_trip(tmp_path):
    saved = styled_set(tmp_path / "a", "stripes")
    loaded = load_images(tmp_path / "a")
    assert loaded.prompts == saved.prompts and loaded.seeds == list(range(12))
    assert loaded.uint8().shape == (12, 3, 16, 16)


@pytest.mark.parametrize("metric", ["fid", "cmmd", "csd"])
def test_distances_are_zero_for_a_set_against_itself(metric, tmp_path, tiny_world_weights):
    styled_set(tmp_path / "a", "stripes")
    from harness.metrics.world import WorldBackbones

    record = compute(metric, tmp_path / "a", tmp_path / "a", WorldBackbones(tiny_world_weights))
    expected = 100.0 if metric == "csd" else 0.0
    assert record["value"] == pytest.approx(expected, abs=1e-4)
    assert record["backbone"] and record["scale"] == "world" and record["images"] == 12


def test_cli_prints_one_json_line(tmp_path, tiny_world_weights, capsys):
    styled_set(tmp_path / "a", "stripes")
    styled_set(tmp_path / "b", "dots")
    assert main(["fid", "--gen", str(tmp_path / "a"), "--ref", str(tmp_path / "b"), "--weights", str(tiny_world_weights)]) == 0
    line = capsys.readouterr().out.strip()
    record = json.loads(line)
    assert record["metric"] == "fid" and record["value"] > 0 and record["reference_images"] == 12
    assert main(["clip_score", "--gen", str(tmp_path / "a"), "--weights", str(tiny_world_weights)]) == 0
    assert -100 <= json.loads(capsys.readouterr().out)["value"] <= 100
    assert main(["presence", "--gen", str(tmp_path / "a"), "--concept", "stripes", "--weights", str(tiny_world_weights)]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["value"] <= 100


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["fid", "--gen", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --ref is required for fid: a folder of reference images"
    assert main(["presence", "--gen", str(tmp_path), "--concept", "stripes", "--weights", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--weights={tmp_path / 'none'}: missing world_clip.safetensors" in err[0]
