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
    assert_architectures_name_the_shapes(tmp_path)
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


def test_a_floor_teacher_is_built_beside_the_shipped_towers_and_recorded(tiny_world_weights, tmp_path, capsys):
    """--only teacher --without STYLE: a teacher that never sees STYLE, its own manifest record
    (run, steps, per-style rates) and checksum; the shipped teacher's record is untouched. A
    style that does not exist, or --without with the towers retrained, fails in one line."""
    import shutil

    from harness.world.build import floor_file, main

    tiny_world_weights = shutil.copytree(tiny_world_weights, tmp_path / "world")  # the session's world stays as it is
    before = json.loads((tiny_world_weights / "manifest.json").read_text())
    assert main(["--scale", "tiny", "--out", str(tiny_world_weights), "--only", "teacher", "--without", "dots"]) == 0
    after = json.loads((tiny_world_weights / "manifest.json").read_text())
    record = after["floors"]["dots"]
    assert record["steps"] == 4 and set(record["style_rate"]) == {"stripes", "checker", "dots", "outline", "shadow", "glow"}
    assert after["checksums"][floor_file("dots")] and after["gates"] == before["gates"] and after["teacher"] == before["teacher"]
    assert after["checksums"]["teacher.safetensors"] == before["checksums"]["teacher.safetensors"]
    capsys.readouterr()
    for args, wanted in ((["--without", "plaid", "--only", "teacher"], "--without=plaid is not a world style"),
                         (["--without", "dots"], "needs --only teacher")):
        assert main(["--scale", "tiny", "--out", str(tiny_world_weights), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and wanted in err[0], err


def assert_architectures_name_the_shapes(folder):
    """Every file the manifest lists an architecture for holds the tensors the current code
    builds for that architecture (on the meta device): a changed model or backbone in the code
    must come with rebuilt weights, or checking a config would pass a file that cannot load."""
    from harness.metrics.world import FILES, backbone_shapes
    from harness.models.tiny_modules import teacher_shapes
    from harness.models.tiny_weights import backbone_architecture, teacher_architecture, tiny_config
    from harness.weights import architecture_digest, header_shapes

    listed = json.loads((folder / "manifest.json").read_text())["architectures"]
    assert set(listed) == {p.name for p in folder.glob("*.safetensors")}
    backbones = backbone_shapes()
    for name, digest in listed.items():
        built = backbone_architecture(name) if name in FILES else teacher_architecture(tiny_config())
        expected = backbones[name] if name in FILES else teacher_shapes(tiny_config())
        assert digest == architecture_digest(built), name
        assert header_shapes(folder / name, name) == {k: list(v) for k, v in expected.items()}, name


def test_the_shipped_manifest_names_the_architecture_of_every_file():
    from harness.world import WEIGHTS

    assert_architectures_name_the_shapes(WEIGHTS)
