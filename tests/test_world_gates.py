"""The quality gates of the shipped Concept World (harness/world/weights), measured here on the
shipped files, not read from the manifest: the style descriptor identifies held-out renders;
the teacher draws the prompted style. (The propagation gate trains students:
tests/test_propagation.py.)"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.models import build_parts
from harness.world import WEIGHTS
from harness.world.build import Recipe, floor_file, style_accuracy, teacher_style_rate, world_pool
from harness.world.render import STYLES
from harness.world.towers import StyleDescriptor, degrade
from tests.conftest import compose

MANIFEST = json.loads((WEIGHTS / "manifest.json").read_text())
HELDOUT_STREAM = 7  # the build renders streams 0 (training pool) and 1 (its own held-out set)


@pytest.fixture(scope="module")
def descriptor():
    model = StyleDescriptor()
    model.load_state_dict(load_file(str(WEIGHTS / "style_descriptor.safetensors")))
    return model.eval()


def test_manifest_describes_the_shipped_files():
    for name, digest in MANIFEST["checksums"].items():
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == digest, name
    floors = MANIFEST.get("floors", {})
    assert set(MANIFEST["checksums"]) == {"teacher.safetensors", "world_clip.safetensors",
                                          "style_descriptor.safetensors"} | {floor_file(s) for s in floors}
    for style, floor in floors.items():  # each floor teacher: the shipped recipe, its style never drawn
        assert floor["recipe"] == MANIFEST["recipe"] and floor["steps"] == MANIFEST["recipe"]["teacher_steps"]
        assert floor["seconds"] > 0 and floor["style_rate"][style] == 0.0
    assert MANIFEST["recipe"]["seed"] == 0 and MANIFEST["teacher"]["steps"] == MANIFEST["recipe"]["teacher_steps"]
    for part in ("world_clip", "style_descriptor", "teacher"):
        assert MANIFEST[part]["seconds"] > 0
    assert MANIFEST["hardware"]["device"] and MANIFEST["torch"]
    assert set(MANIFEST["gates"]["teacher_style_rate"]) == set(STYLES)


def test_style_descriptor_identifies_heldout_styles(descriptor):
    heldout = world_pool(Recipe(), 16, 1_400, HELDOUT_STREAM)
    assert style_accuracy(descriptor, heldout) >= 0.95
    # Also as samples look: forward noise at small t and blur (the degradations it trained on).
    images = heldout.pixels.float() / 127.5 - 1
    alphas = build_parts(compose().model).noise_scheduler.alphas_cumprod
    degraded = degrade(images, alphas, torch.Generator().manual_seed(HELDOUT_STREAM), p_noise=1.0, p_blur=0.5)
    labels = torch.tensor([(("plain",) + STYLES).index(s.style or "plain") for s in heldout.scenes])
    with torch.no_grad():
        accuracy = float((descriptor(degraded).argmax(1) == labels).float().mean())
    assert accuracy >= 0.95


# Styles the shipped teacher draws too weakly to erase or retain measurably: in no concept set.
WEAK = {"checker"}  # 55% of 64 samples (every other style 94-100%)


def concept_set_styles() -> set[str]:
    """Every world style that a concept set (harness/conf/concepts) erases or retains."""
    from omegaconf import OmegaConf

    from harness.compose import CONF

    used = set()
    for path in (CONF / "concepts").glob("*.yaml"):
        conf = OmegaConf.load(path)
        names = set(conf.erase) | set(conf.get("retain") or [])
        if names <= set(STYLES):
            used |= names
    return used


def test_teacher_draws_every_style_a_concept_set_uses(descriptor):
    """A style the teacher does not draw cannot be measured being erased (or kept): every style
    of every world concept set is drawn for ≥ 80% of its prompts (32 samples each)."""
    used = concept_set_styles()
    assert used and not used & WEAK, used & WEAK
    cfg = compose()
    parts = build_parts(cfg.model)  # model=world: the shipped teacher and its text tower
    recipe = replace(Recipe(seed=HELDOUT_STREAM), gate_samples_per_style=32, gate_sampler_steps=20)
    rates = teacher_style_rate(parts, parts.unet.eval(), descriptor, recipe, cfg.model.guidance)
    assert all(rates[s] >= 0.8 for s in used), rates
    assert float(np.mean(list(rates.values()))) >= 0.8, rates
