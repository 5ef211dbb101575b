"""Model parts by name: `model.name` selects the builder."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.errors import ConfigError
from harness.models.parts import DiffusionParts


def build_parts(cfg: DictConfig) -> DiffusionParts:
    """The teacher's parts for the `model` config group."""
    if cfg.name in ("tiny", "world"):
        from harness.models.tiny import build_tiny

        return build_tiny(cfg)
    if cfg.name == "sd21":
        from harness.models.sd21 import load_sd21

        return load_sd21(cfg)
    raise ConfigError("model", cfg.name, "world, tiny or sd21")


__all__ = ["DiffusionParts", "build_parts"]
