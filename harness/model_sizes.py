"""What a cell's models weigh, for the plan's cost model (harness/plan.py): MACs per image of
the pruned student, the teacher and the VAE; parameters; the activations autograd keeps per
training image; the cost of a backward pass over each parameter subset. Measured on a model
built from the cell's layout with random weights (sizes depend on the layout alone), cached
by layout, ratio and importance under $HARNESS_CACHE/plan."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


@dataclass
class Sizes:
    """Per image: MACs of the student's and the teacher's UNet forward, the VAE's encode and
    decode (0 in pixel space); parameter counts; activation bytes of one training image."""
    student_macs: float
    teacher_macs: float
    student_params: int
    teacher_params: int
    encode_macs: float = 0.0
    decode_macs: float = 0.0
    frozen_params: int = 0  # text encoder + VAE
    activation_bytes: float = 0.0
    # a backward pass over each parameter subset, as a share of the student's forward
    # (torch's FLOP counter at the trace size): layers before the first trained one need none
    backward: dict = field(default_factory=lambda: {"full": 2.0})


def _cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness") / "plan"


def sizes(cfg: DictConfig) -> Sizes:
    """The cell's UNet sizes: from its pruned_init when the cell has started, else by pruning
    a UNet of the model's layout (random weights: MACs depend on the layout alone), cached by
    layout, ratio and importance under $HARNESS_CACHE/plan."""
    from harness.method import get_method

    prunes = get_method(cfg.method.name).prunes
    layout = _layout(cfg.model)
    key = hashlib.sha256(json.dumps([layout, cfg.pruning.ratio if prunes else 0, cfg.pruning.importance if prunes else ""],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{key}.json"
    if path.is_file():
        return Sizes(**json.loads(path.read_text()))
    found = _measure(cfg, layout, prunes)
    path.parent.mkdir(parents=True, exist_ok=True)
    from harness.files import write_atomic

    write_atomic(path, json.dumps(found.__dict__))
    return found


def _layout(model: DictConfig) -> dict:
    """What decides the sizes: the UNet/VAE/text-encoder configs (SD 2.1: read from its
    folder's config.json files, no weights), or the tiny model's config section."""
    if model.name == "sd21":
        from harness.errors import MissingInputError
        from harness.models.sd21 import PUBLISHED_LAYOUT, locate

        try:
            root = locate(model)
        except MissingInputError:  # planned before the weights are here: SD 2.1's published configs
            return {**json.loads(json.dumps(PUBLISHED_LAYOUT)), "resolution": model.resolution}
        return {sub: json.loads((root / sub / "config.json").read_text()) for sub in ("unet", "vae", "text_encoder")} | {
            "resolution": model.resolution}
    return OmegaConf.to_container(model, resolve=True)


_TEACHERS: dict[str, tuple] = {}  # the last layout's teacher and its figures: a sweep's ratios prune one teacher


def _teacher(cfg: DictConfig, layout: dict) -> tuple:
    """(teacher UNet, its MACs, its parameters, VAE encode and decode MACs, frozen parameters)."""
    import torch

    from harness.pruning import count_macs_params

    key = json.dumps(layout, sort_keys=True, default=str)
    if key in _TEACHERS:
        return _TEACHERS[key]
    _TEACHERS.clear()
    torch.manual_seed(0)
    if cfg.model.name == "sd21":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
        teacher = UNet2DConditionModel(**strip(layout["unet"]))
        vae = AutoencoderKL(**strip(layout["vae"]))
        with torch.device("meta"):  # its size only: nothing allocated
            text_encoder = CLIPTextModel(CLIPTextConfig(**strip(layout["text_encoder"])))
        frozen = sum(p.numel() for p in vae.parameters()) + sum(p.numel() for p in text_encoder.parameters())
        encode, decode = _vae_macs(vae, cfg.model.resolution)
        del vae
    else:
        from harness.models import build_parts

        parts = build_parts(cfg.model)
        teacher, encode, decode = parts.unet, 0.0, 0.0
        frozen = sum(p.numel() for p in parts.text_encoder.parameters())
    teacher.requires_grad_(False).eval()
    t_macs, t_params = count_macs_params(teacher)
    _TEACHERS[key] = (teacher, t_macs, t_params, encode, decode, frozen)
    return _TEACHERS[key]


def _measure(cfg: DictConfig, layout: dict, prunes: bool) -> Sizes:
    import torch

    from harness.pruning import TRACE_SIZE, count_macs_params, example_inputs, prune_unet

    teacher, t_macs, t_params, encode, decode, frozen = _teacher(cfg, layout)
    if not prunes:  # the teacher cell trains nothing: no backward, no activations kept
        return Sizes(float(t_macs), float(t_macs), int(t_params), int(t_params), float(encode), float(decode), int(frozen))
    size = teacher.config.sample_size
    student = prune_unet(teacher, cfg.pruning.ratio, cfg.pruning.importance, 0)[0]
    s_macs, s_params = count_macs_params(student)
    backward = _backward_shares(student, min(TRACE_SIZE, size))
    # activations: what autograd keeps for the backward of one image at the trace size
    saved, seen = [0], {p.untyped_storage().data_ptr() for p in student.parameters()}  # weights are not activations

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:  # each activation once, however many ops keep it
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    trace = min(TRACE_SIZE, size)
    student.requires_grad_(True).train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = student(**example_inputs(student, batch=1, size=trace)).sample
    out.sum().backward()
    del student, out
    gc.collect()  # diffusers' modules hold reference cycles: free this student before the next ratio's
    return Sizes(float(s_macs), float(t_macs), int(s_params), int(t_params), float(encode), float(decode), int(frozen),
                 saved[0] * (size / trace) ** 2, backward)


def _backward_shares(unet, trace: int) -> dict[str, float]:
    """FLOPs of a backward reaching each parameter subset, over the forward's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.models.subsets import SUBSETS, parameter_subset
    from harness.pruning import example_inputs

    shares = {}
    inputs = example_inputs(unet, batch=1, size=trace)
    for subset in SUBSETS:
        params = parameter_subset(unet, subset)
        unet.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        if not params:
            shares[subset] = 0.0
            continue
        with FlopCounterMode(display=False) as forward:
            out = unet(**inputs).sample
        with FlopCounterMode(display=False) as backward:
            out.float().sum().backward()
        shares[subset] = backward.get_total_flops() / forward.get_total_flops()
        unet.zero_grad(set_to_none=True)
    unet.requires_grad_(True)
    return shares


def _vae_macs(vae, resolution: int) -> tuple[float, float]:
    import torch
    import torch_pruning as tp

    image = torch.zeros(1, vae.config.in_channels, resolution, resolution)
    with torch.no_grad():
        latent = vae.encode(image).latent_dist.mean
    encode, _ = tp.utils.count_ops_and_params(lambda_module(lambda x: vae.encode(x).latent_dist.mean, vae), image)
    decode, _ = tp.utils.count_ops_and_params(lambda_module(lambda z: vae.decode(z).sample, vae), latent)
    return float(encode), float(decode)


def lambda_module(fn, owner=None):
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, x):
            return fn(x)

    return Wrapped()
