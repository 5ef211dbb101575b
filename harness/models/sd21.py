"""Stable Diffusion 2.1 parts, loaded from local files only (a diffusers-format directory or
the Hugging Face cache). Nothing is downloaded: a missing part fails in one line naming where
the harness looked."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from harness.errors import MissingInputError
from harness.models.parts import DiffusionParts

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# SD 2.1's published layout (stabilityai/stable-diffusion-2-1's config.json files): what the
# benchmark builds with random weights, and what `--plan` sizes cells by where no local copy is
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SD21_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215,
)
PUBLISHED_LAYOUT = {"unet": SD21_BASE_UNET, "vae": SD21_VAE,
                    "text_encoder": dict(SD21_TEXT, vocab_size=49408, hidden_act="gelu", projection_dim=512)}


def locate(cfg: DictConfig) -> Path:
    """The directory holding the pipeline's subfolders, or MissingInputError."""
    candidates = []
    if cfg.get("path"):
        candidates.append(Path(os.path.expanduser(str(cfg.path))))
    else:
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        snapshots = hub.expanduser() / f"models--{cfg.repo_id.replace('/', '--')}" / "snapshots"
        candidates.extend(sorted(snapshots.glob("*")) if snapshots.is_dir() else [snapshots])
    for root in candidates:
        if all((root / sub).is_dir() for sub in SUBFOLDERS):
            return root
    where = candidates[0] if candidates else "(nowhere)"
    missing = [s for s in SUBFOLDERS if not (Path(where) / s).is_dir()]
    raise MissingInputError(
        f"model.path={where}: no Stable Diffusion 2.1 weights there "
        f"(missing {', '.join(missing)}/; set model.path to a local diffusers-format copy)"
    )


def load_sd21(cfg: DictConfig) -> DiffusionParts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = locate(cfg)
    kw = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw)
    scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return DiffusionParts(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=scheduler,
        sampler_config=dict(scheduler.config),
        vae=vae,
        prediction_type=scheduler.config.prediction_type,
        resolution=cfg.resolution,
        vae_scale=vae.config.scaling_factor,
    )
