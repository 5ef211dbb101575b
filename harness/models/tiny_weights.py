"""Which trained-weights file a tiny (world) model reads, and what architecture it was built for.

A weights file is verified before anything uses it (harness/weights.py): the sha256 its manifest
lists, then its tensor names and shapes. The shapes the model expects come from building it on
the meta device, which imports diffusers and transformers (about 4 CPU-seconds). A manifest
written by `python -m harness.world.build` also lists, per file, a digest of the architecture
the file was built for (`harness.weights.architecture_digest`); when the file's checksum matches and the config
asks for that same architecture, its shapes are known without building anything, so checking a
config or submitting a SLURM sweep imports neither library. (tests/test_world_build.py checks
that the shipped manifest's digests name the shapes the current code builds.)

This module imports no model library: the builders live in harness/models/tiny_modules.py."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import MissingInputError

CONFIG = Path(__file__).resolve().parent.parent / "conf" / "model" / "tiny.yaml"
# keys of the model section that do not change a weights file's tensors
NOT_ARCHITECTURE = ("name", "weights", "guidance", "init_seed")


def tiny_config() -> DictConfig:
    """The `model=tiny` config, read without Hydra (safe inside a running Hydra app)."""
    from harness.compose import read_yaml

    return read_yaml(CONFIG)


def teacher_architecture(model: DictConfig) -> str:
    """What a teacher file's tensors depend on: the model section (less its name, file and
    sampling settings) and the tokenizer's vocabulary size."""
    from harness.world import vocabulary

    spec = {k: v for k, v in OmegaConf.to_container(model, resolve=True).items() if k not in NOT_ARCHITECTURE}
    return json.dumps({**spec, "vocabulary": len(vocabulary())}, sort_keys=True, default=str)


def backbone_architecture(file: str) -> str:
    """What a world metric backbone file's tensors depend on: which backbone it is, and the text
    tower of the shipped tiny config (World CLIP wraps it)."""
    from harness.world import vocabulary

    text = OmegaConf.to_container(tiny_config().text_encoder, resolve=True)
    return json.dumps({"backbone": file, "text_encoder": text, "vocabulary": len(vocabulary())}, sort_keys=True)


def teacher_weights(model: DictConfig) -> Path | None:
    """The weights file `model` (the config's model section) asks for: `model.weights`, or for
    `model=world` with none given, the shipped teacher; None: random init (`model=tiny`). A file
    asked for must exist and pass its checks."""
    if model.get("weights"):
        path = Path(str(model.weights)).expanduser()
    elif model.name == "world":
        from harness.world import WEIGHTS

        path = WEIGHTS / "teacher.safetensors"
    else:
        return None
    if not path.is_file():
        raise MissingInputError(f"model.weights={path}: no such file (a teacher.safetensors of trained world weights; build one with python -m harness.world.build)")
    from harness.weights import verify

    def expected():
        from harness.models.tiny_modules import teacher_shapes

        return teacher_shapes(model)

    return verify(path, "model.weights", expected, teacher_architecture(model))
