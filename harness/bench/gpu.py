"""The GPU section: the training step at Stable Diffusion 2.1 scale, with no download.

The UNet is SD 2.1-base's architecture built from its config with random weights (865 M
parameters), on 64×64×4 latents (512 px images), batch 16, bf16 autocast; the student is its
torch-pruning copy at `ratio`. Step time does not depend on weight values. What is left out,
and why: the VAE encoder (the latents are given, as with pre-encoded training sets) and the
text encoder's cost (frozen and cached per caption in every method; a random 1024-wide CLIP
text encoder gives the cross-attention input its SD 2.1 shape). Model-FLOPs utilization is
the step's FLOP count (torch's counter: matmuls and convolutions, forward and backward) per
second over the GPU's dense bf16 peak."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.context import CellContext

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, by device-name substring.
PEAK_BF16 = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 756e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "A10": 125e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX A6000": 155e12, "A40": 150e12,
}

from harness.models.sd21 import SD21_BASE_UNET, SD21_TEXT  # noqa: E402 - SD 2.1's published layout

# The same layout at toy size: how the tests exercise this module on a CPU.
TOY_UNET = dict(SD21_BASE_UNET, sample_size=8, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 2, 4, 4),
                cross_attention_dim=64, norm_num_groups=8, layers_per_block=1)
TOY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77)
ARCHS = {"sd21": (SD21_BASE_UNET, SD21_TEXT), "toy": (TOY_UNET, TOY_TEXT)}


def peak_flops(device: torch.device) -> tuple[float | None, str | None]:
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak, key
    return None, None


class LatentSet(Dataset):
    """Fixed random latents (4 × s × s) paired with captions: a pre-encoded training set."""

    def __init__(self, captions: list[str], size: int, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, 4, size, size, generator=g)
        self.captions = [captions[i % len(captions)] for i in range(n)]

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.latents[i], "caption": self.captions[i]}

    def __getitems__(self, idx: list[int]) -> list[dict]:
        return [self[i] for i in idx]


def build_parts(arch: str):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from harness.models.parts import DiffusionParts
    from harness.models.tiny_modules import build_tokenizer

    unet_cfg, text_cfg = ARCHS[arch]
    tokenizer = build_tokenizer(text_cfg["max_position_embeddings"])
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                **text_cfg)).requires_grad_(False).eval()
    unet = UNet2DConditionModel(**unet_cfg)
    # SD 2.1-base's training scheduler
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type="epsilon", clip_sample=False, steps_offset=1)
    return DiffusionParts(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, noise_scheduler=scheduler,
                          sampler_config=dict(scheduler.config), vae=None, prediction_type="epsilon",
                          resolution=unet_cfg["sample_size"])


def context(cfg, device: torch.device, arch: str, ratio: float, folder: Path, say=print) -> tuple[CellContext, dict]:
    """A cell context at `arch` scale: teacher, pruned student, latent data sets with the
    world's captions and concepts. Returns it and the build timings."""
    import copy

    from harness import concepts as concept_registry
    from harness.data import DataSets
    from harness.world.render import sample_scenes
    from harness.pruning import PruneReport, count_macs_params, prune_unet

    t0 = time.perf_counter()
    parts = build_parts(arch)
    t_build = time.perf_counter() - t0
    parts.unet.requires_grad_(False).eval()
    if ratio:
        t0 = time.perf_counter()
        student, report = prune_unet(parts.unet, ratio, cfg.pruning.importance, cfg.seed)
        t_prune = time.perf_counter() - t0
    else:
        macs, params = count_macs_params(parts.unet)
        student, report, t_prune = copy.deepcopy(parts.unet), PruneReport(0.0, "none", params, params, macs, macs), 0.0
    say(f"  {arch} UNet built in {t_build:.1f} s, pruned in {t_prune:.1f} s: {report.params_before / 1e6:.0f}M -> {report.params_after / 1e6:.0f}M params")
    parts.to(device)
    erase, retain = concept_registry.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    size = parts.resolution
    neutral = [s.caption() for s in sample_scenes(64, np.random.default_rng([cfg.data.seed, 0]), (None,))]
    styled = [c.apply(n) for c in erase for n in neutral]
    data = DataSets(
        finetune=LatentSet(neutral, size, 256, seed=1),
        make_concept=lambda: LatentSet(styled, size, 256, seed=2),
        heldout_neutral=LatentSet(neutral, size, 32, seed=3),
        heldout_concept=lambda c: LatentSet([c.apply(n) for n in neutral], size, 32, seed=4),
    )
    student = student.to(device).requires_grad_(True)
    kept = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in report.kept_channels.items()}
    ctx = CellContext(cfg, folder, device, parts, student, report, data, erase, retain, None, kept)
    return ctx, {"build_s": t_build, "prune_s": t_prune}


def mfu(section: dict, device: torch.device) -> dict:
    """Model-FLOPs utilization and training images/s of each timed variant."""
    peak, matched = peak_flops(device)
    out = {}
    batch = section["config"]["batch_size"]
    for name, row in section["per_step"].items():
        if "flops_lower" not in row and name != "plain loop":
            continue
        src = section["per_step"][section["config"]["baseline"]] if name == "plain loop" else row
        flops = src["flops_lower"]
        if "flops_upper" in row:
            flops += row["flops_upper"] * section["vs_baseline"][name]["upper_per_lower"]
        achieved = flops / row["seconds"]
        out[name] = {"tflops_per_s": achieved / 1e12, "mfu": achieved / peak if peak else None,
                     "images_per_s": batch / row["seconds"]}
    return {"peak_bf16_flops": peak, "peak_matched": matched, "variants": out}
