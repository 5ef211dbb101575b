"""The propagation gate on the shipped world, measured by running the harness: a pruned student
fine-tuned by the distill recipe on plain renders alone still draws the erasable styles on
request, at a presence rate of at least twice chance and clearly above a student fine-tuned
with the diffusion loss alone (sweep=propagation at ratio 0.05, 150 steps; about three CPU-minutes)."""

from __future__ import annotations

import json

from harness.concepts import DOMAINS
from harness.world.towers import STYLE_CLASSES
from tests.conftest import REPO, run_cli

CHANCE = 100 / len(STYLE_CLASSES)  # presence is a percentage; the descriptor has 7 classes


def erasable_styles() -> list[str]:
    """Every style some concept set of the world erases."""
    from omegaconf import OmegaConf

    names = []
    for path in sorted((REPO / "harness" / "conf" / "concepts").glob("*.yaml")):
        for name in OmegaConf.load(path).erase:
            if name in DOMAINS["world"] and name not in names:
                names.append(name)
    return names


def test_distillation_carries_the_erasable_styles_into_the_pruned_student(tmp_path):
    styles = erasable_styles()
    # only the erasable styles are drawn (a distill cell measures every style of the world by
    # default): half the evaluation's images, the gate's own prompts unchanged
    only = ["eval.concepts=set", f"concepts.erase=[{','.join(styles)}]", "concepts.retain=[]"]
    result = run_cli(["harness", "-m", "sweep=propagation", "pruning.ratio=0.05", f"out_dir={tmp_path}", *only,
                      "eval.neutral_prompts=8", "eval.concept_prompts=64", "tracking.enabled=false", "runtime.progress=false"],
                     timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    presence = {}
    for results in tmp_path.glob("cells/*/results.json"):
        record = json.loads(results.read_text())
        loss = record["config"]["finetune"]["loss"]
        kind = "distill" if loss["output_kd"] or loss["feature_kd"] else "diffusion only"
        presence[kind] = sum(record["metrics"][f"presence/{s}"] for s in styles) / len(styles)
    assert set(presence) == {"distill", "diffusion only"}
    assert presence["distill"] >= 2 * CHANCE, presence
    assert presence["distill"] >= presence["diffusion only"] + 15, presence
