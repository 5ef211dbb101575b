"""Relearning: how many fine-tuning steps on a handful of concept images bring an erased
concept back ("Erased or Dormant?", 2025). A concept that was only hidden returns in a few
steps; one that is gone takes about as long as learning it afresh.

    M ← a copy of the erased model; D ← n images of the concept with their captions
    for s = 1 .. S:  one step of the plain diffusion loss on D (all n images, fresh t and ε)
        every `every` steps: presence of the concept in M's images for the probe's prompts
        stop when presence ≥ the distilled model's presence − `within` points
    report s (or S, censored, when it never came back)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.losses import diffusion_target, weighted_mse


@dataclass(frozen=True)
class RelearnConfig:
    images: int = 8
    steps: int = 100
    every: int = 10
    lr: float = 1e-4
    within: float = 10.0  # points of presence below the distilled model's that count as "back"
    seed: int = 0


@dataclass
class Relearned:
    steps: int  # fine-tuning steps until the concept was back (cfg.steps when it never was)
    back: bool
    curve: list[tuple[int, float]]  # (step, presence %) at every check, step 0 first


def relearn(parts, model, images: torch.Tensor, captions: list[str], presence: Callable[[torch.nn.Module], float],
            target: float, cfg: RelearnConfig) -> Relearned:
    """Fine-tune a copy of `model` on `images` (in [-1, 1]) until `presence(model)` reaches
    `target - cfg.within`; `model` itself is left as it was."""
    g = torch.Generator().manual_seed(cfg.seed)
    student = copy.deepcopy(model).train()
    for p in student.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler, device = parts.noise_scheduler, parts.device
    with torch.no_grad():
        x0 = parts.encode_images(images.to(device), g)
        cond = parts.encode_prompts(list(captions))
    level = presence(student.eval())
    curve = [(0, level)]
    if level >= target - cfg.within:
        return Relearned(0, True, curve)
    for step in range(1, cfg.steps + 1):
        student.train()
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        pred = student(scheduler.add_noise(x0, noise, t), t, cond).sample
        loss = weighted_mse(pred, diffusion_target(scheduler, x0, noise, t, parts.prediction_type))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.every == 0 or step == cfg.steps:
            level = presence(student.eval())
            curve.append((step, level))
            if level >= target - cfg.within:
                return Relearned(step, True, curve)
    return Relearned(cfg.steps, False, curve)
