"""The floor: the same probes on a model that never learned the concept, so that an erased
model's ASR and relearning steps can be read against what "gone" looks like.

    F ← the world's teacher trained by the shipped recipe on a pool without the concept's scenes
        (python -m harness.world.build --only teacher --without <concept>; the frozen text
        tower is the shipped one, so the concept's word still reads as it does everywhere)
    Pre-ASR, ASR soft / discrete and relearning steps of F: the cell's prompts, seeds, attack
    and relearning budget, and the same relearning target (the distilled model's presence)

An eraser whose values sit at F's is indistinguishable from never having learned the concept.
F's values depend on the concept, the seed, the budget, the target and F's weights, never on
the cell: they are measured once per out_dir and read back by every cell that asks
(<out_dir>/robustness/floors/). At real scale no model that never learned an artist ships:
the floor is the world's (validation says so in one line).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch

from harness.errors import ConfigError, CorruptInputError, MissingInputError
from harness.files import write_atomic

STEM = "robust/floor"  # the floor's metrics: robust/floor/<probe>/<concept>


def weights_path(cfg, concept: str) -> Path:
    """The floor teacher of `concept`: in `eval.robustness.floor_weights`, else beside the shipped world."""
    from harness.world import WEIGHTS
    from harness.world.build import floor_file

    folder = cfg.eval.robustness.get("floor_weights")
    return Path(str(folder)).expanduser() / floor_file(concept) if folder else WEIGHTS / floor_file(concept)


def check(cfg) -> None:
    """Before anything runs: the floor is asked on the world, and every erased concept has one."""
    if cfg.data.domain != "world":
        raise ConfigError("eval.robustness.floor", True, f"false with data={cfg.data.name}: the floor (a model that never "
                          "learned the concept) exists for the Concept World only")
    for name in cfg.concepts.erase:
        if not (path := weights_path(cfg, str(name))).is_file():
            raise MissingInputError(f"eval.robustness.floor: {path}: no such file (the floor teacher of {name}; build it "
                                    f"with python -m harness.world.build --only teacher --without {name})")


def load(ctx, concept: str) -> torch.nn.Module:
    """F's UNet (checksum and shapes verified), beside the cell's frozen text encoder, which F
    must share (a floor built with another world CLIP reads prompts differently)."""
    from safetensors.torch import load_file

    from harness.models.tiny_modules import teacher_shapes
    from harness.models.tiny_weights import teacher_architecture
    from harness.weights import verify

    path = weights_path(ctx.cfg, concept)
    verify(path, "eval.robustness.floor_weights", lambda: teacher_shapes(ctx.cfg.model), teacher_architecture(ctx.cfg.model))
    state = load_file(str(path))
    text = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    mine = ctx.parts.text_encoder.state_dict()
    if text.keys() != mine.keys() or any(not torch.equal(v, mine[k].cpu()) for k, v in text.items()):
        raise CorruptInputError(f"eval.robustness.floor_weights: {path}: its text encoder is not the teacher's (a floor must be "
                                "built beside the shipped world CLIP: python -m harness.world.build --only teacher --without <style>)")
    unet = copy.deepcopy(ctx.teacher)
    unet.load_state_dict({k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")})
    return unet.requires_grad_(False).eval()


def _key(ctx, concept: str, ci: int, reference_metrics: dict | None) -> str:
    from harness.robustness import budget
    from harness.weights import sha256

    ev = ctx.cfg.eval
    spent = {k: v for k, v in budget(ctx.cfg).items() if k not in ("neighbours", "floor")}
    what = {"floor": sha256(weights_path(ctx.cfg, concept)), "concept": concept, "index": ci, "seed": int(ctx.cfg.seed),
            "budget": spent, "eval": {k: str(ev.get(k)) for k in ("seed", "guidance", "batch_size", "concept_prompts")},
            "target": (reference_metrics or {}).get(f"presence/{concept}")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def probe(ctx, concept, ci: int, backbones, domain, reference_metrics: dict | None) -> tuple[dict, dict]:
    """(F's metrics under robust/floor/, its record entry), measured once per out_dir."""
    from harness.robustness import probe_concept

    key = _key(ctx, concept.name, ci, reference_metrics)
    folder = Path(str(ctx.cfg.out_dir)) / "robustness" / "floors" / f"{concept.name}-{key}"
    done = folder / "floor.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        return kept["metrics"], {**kept["entry"], "measured_in": kept["measured_in"], "key": key}
    metrics, entry, _ = probe_concept(ctx, load(ctx, concept.name), concept, ci, backbones, domain, reference_metrics,
                                      folder, stem=STEM)
    entry["weights"] = str(weights_path(ctx.cfg, concept.name))
    write_atomic(done, json.dumps({"metrics": metrics, "entry": entry, "measured_in": ctx.folder.name}, indent=1))
    return metrics, {**entry, "measured_in": ctx.folder.name, "key": key}
