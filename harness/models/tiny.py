"""The tiny model: every part built offline from config, small enough for a CPU.

Pixel space, epsilon prediction by default: one training step is well under a second on two
cores. Its modules, randomly initialised (a word-level tokenizer over the world's vocabulary,
the CLIP text encoder, the UNet), are built in harness/models/tiny_modules.py; a teacher file is
loaded into them here."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler
from omegaconf import DictConfig, OmegaConf

from harness.models.parts import DiffusionParts
from harness.models.tiny_modules import random_modules
from harness.models.tiny_weights import teacher_weights


def build_tiny(cfg: DictConfig) -> DiffusionParts:
    """Build every part from `cfg` (the `model` config group) with a fixed init seed."""
    tokenizer, text_encoder, unet = random_modules(cfg)
    weights = teacher_weights(cfg)
    if weights is not None:
        _load_weights(weights, unet, text_encoder)
    scheduler_config = OmegaConf.to_container(cfg.scheduler, resolve=True)
    scheduler_config["prediction_type"] = cfg.prediction_type
    text_encoder.requires_grad_(False).eval()
    return DiffusionParts(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=DDPMScheduler(**scheduler_config),
        sampler_config=scheduler_config,
        vae=None,
        prediction_type=cfg.prediction_type,
        resolution=cfg.resolution,
    )


def _load_weights(path: Path, unet, text_encoder) -> None:
    """Trained weights for the tiny model: one safetensors file with `unet.` and
    `text_encoder.` prefixed tensors."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
