"""The world-model recipe at a few steps, so it cannot rot; and its weights load into the harness."""

from __future__ import annotations

import json

import torch

from harness.models import build_parts
from harness.world.build import SCALES, build
from harness.world.render import STYLES
from tests.conftest import compose


def test_tiny_build_writes_weights_manifest_and_loads(tiny_world_weights):
    tmp_path = tiny_world_weights
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for name in ("world_clip", "style_descriptor", "teacher"):
        assert (tmp_path / f"{name}.safetensors").is_file()
        assert manifest["checksums"][f"{name}.safetensors"]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["recipe"]["teacher_steps"] == SCALES["tiny"].teacher_steps
    assert 0.0 <= on_disk["gates"]["style_accuracy_heldout"] <= 1.0
    assert set(on_disk["gates"]["teacher_style_rate"]) == set(STYLES)
    parts = build_parts(compose([f"model.weights={tmp_path / 'teacher.safetensors'}"]).model)
    from safetensors.torch import load_file

    shipped = load_file(str(tmp_path / "teacher.safetensors"))
    assert torch.equal(parts.unet.conv_in.weight, shipped["unet.conv_in.weight"])


def test_gates_can_be_measured_without_training(tiny_world_weights):
    before = {p.name: p.stat().st_mtime for p in tiny_world_weights.glob("*.safetensors")}
    manifest = build(tiny_world_weights, SCALES["tiny"], torch.device("cpu"), parts_wanted=())
    assert {p.name: p.stat().st_mtime for p in tiny_world_weights.glob("*.safetensors")} == before
    assert set(manifest["gates"]["teacher_style_rate"]) == set(STYLES)
