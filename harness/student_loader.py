"""Load a pruned student into diffusers: the one loader of pruned UNets, in the harness and out.

Standalone on purpose: it needs torch, safetensors and diffusers (transformers for the
pipeline's text encoder) and nothing of the harness, so `python -m harness.export` copies this
file into the exported folder as `load_student.py` and the folder works without this package:

    from load_student import load_student
    pipe = load_student("students/stripes-0.1")        # a diffusers StableDiffusionPipeline
    images = pipe("a painting of a harbour", num_inference_steps=50, guidance_scale=7.5).images

A pixel-space student (the embedded Concept World) has no VAE: call the pipeline with
`output_type="latent"` and its `.images` are the pixels in [-1, 1] (clamp them).

Why a loader at all: torch-pruning leaves every layer with its own channel count, which a
`UNet2DConditionModel` config (one width per block) cannot express. The folder keeps the
unpruned UNet's config (unet/config.json), the shape of every tensor after pruning
(unet/pruned_shapes.json) and the weights (safetensors, no pickle). The loader builds the
unpruned UNet from the config, shrinks each tensor to its saved shape, makes the modules'
size attributes agree, and loads the weights strictly: every tensor present, every shape equal.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

SHAPES_FILE = "pruned_shapes.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
MANIFEST = "manifest.json"


def sync_module_attributes(unet: nn.Module) -> None:
    """Make module attributes agree with (pruned) tensor shapes: diffusers' Up/Downsample
    check their static `channels`, and loading needs consistent in/out feature counts."""
    for m in unet.modules():
        if isinstance(m, nn.Conv2d):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            m.num_channels = m.weight.shape[0]
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)
    for m in unet.modules():  # after the convs they wrap
        if type(m).__name__ in ("Downsample2D", "Upsample2D") and getattr(m, "conv", None) is not None:
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels


def build_pruned_unet(config: dict, shapes: dict[str, list[int]], state: dict[str, torch.Tensor]):
    """The unpruned UNet of `config`, every tensor shrunk to `shapes`, then `state` loaded."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    tensors = dict(unet.named_parameters())
    tensors.update(dict(unet.named_buffers()))
    unknown = sorted(set(shapes) - set(tensors))
    if unknown:
        raise ValueError(f"pruned shapes name {len(unknown)} tensors this UNet config does not have (first: {unknown[0]})")
    for name, shape in shapes.items():
        t = tensors[name]
        if list(t.shape) != list(shape):
            t.data = torch.empty(shape, dtype=t.dtype)
    sync_module_attributes(unet)
    unet.load_state_dict(state, strict=True)
    return unet


def verify_manifest(folder: Path) -> None:
    """Check every file the folder's manifest lists against its sha256 (a copy cut short or
    altered fails here, naming the file, rather than loading wrong weights)."""
    path = folder / MANIFEST
    if not path.is_file():
        return
    for name, digest in json.loads(path.read_text())["sha256"].items():
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file}: listed in {MANIFEST} but missing")
        h = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != digest:
            raise ValueError(f"{file}: sha256 {h.hexdigest()[:12]}... differs from {MANIFEST}'s {digest[:12]}...")


def load_unet(folder: str | Path):
    """The pruned UNet of an exported folder (its `unet/` subfolder)."""
    from safetensors.torch import load_file

    unet_dir = Path(folder) / "unet"
    config = json.loads((unet_dir / "config.json").read_text())
    shapes = json.loads((unet_dir / SHAPES_FILE).read_text())["shapes"]
    return build_pruned_unet(config, shapes, load_file(str(unet_dir / WEIGHTS_FILE)))


def load_student(folder: str | Path, verify: bool = True, **pipeline_kwargs):
    """A StableDiffusionPipeline with the pruned student as its UNet, from local files only.
    `pipeline_kwargs` go to `StableDiffusionPipeline.from_pretrained` (e.g. torch_dtype)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    if verify:
        verify_manifest(folder)
    unet = load_unet(folder)
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("vae") in (None, [None, None]):
        pipeline_kwargs.setdefault("vae", None)  # pixel space: the UNet's samples are the images
    with warnings.catch_warnings():  # its notes on the scheduler config it rewrites (undone below)
        warnings.filterwarnings("ignore", message=r"(?s).*(steps_offset|clip_sample)", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, unet=unet, safety_checker=None, feature_extractor=None, local_files_only=True, **pipeline_kwargs
        )
    if "torch_dtype" in pipeline_kwargs:
        pipe.unet.to(pipeline_kwargs["torch_dtype"])
    # StableDiffusionPipeline's constructor rewrites an older scheduler config (steps_offset 1,
    # clip_sample off); the student was evaluated with its scheduler as saved: put that back.
    pipe.scheduler = type(pipe.scheduler).from_pretrained(folder, subfolder="scheduler")
    return pipe
