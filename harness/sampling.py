"""Sampling with classifier-free guidance, batched: the conditional and unconditional
predictions come from one UNet call per step. DDIM everywhere by default; PNDM (PLMS) for
evaluation where the authors' protocol uses it (`eval.sampler=pndm`)."""

from __future__ import annotations

import torch

from harness.distributed import batch_draw
from harness.models.parts import DiffusionParts

# diffusers' scheduler classes by `kind`, imported where a sampler is made: the erasers import
# this module, and checking a config (which imports the erasers' keys) must not import diffusers
SAMPLERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler"}


def sampler_scheduler(parts: DiffusionParts, kind: str = "ddim"):
    """The diffusers scheduler the harness samples with (`kind`: ddim | pndm), before its steps
    are set: what an exported student's pipeline carries (harness.export)."""
    import diffusers

    config = {k: v for k, v in parts.sampler_config.items() if not k.startswith("_")}
    if kind == "pndm":
        config["skip_prk_steps"] = True  # PLMS as Stable Diffusion's pipelines run it
    return getattr(diffusers, SAMPLERS[kind]).from_config(config)


def make_sampler(parts: DiffusionParts, steps: int, kind: str = "ddim"):
    sampler = sampler_scheduler(parts, kind)
    sampler.set_timesteps(steps)
    return sampler


@torch.no_grad()
def cfg_prediction(unet, x, t, cond, uncond, guidance: float) -> torch.Tensor:
    n = x.shape[0]
    if guidance == 1.0:  # the conditional prediction itself: no unconditional pass needed
        return unet(x, torch.full((n,), int(t), device=x.device, dtype=torch.long), cond).sample
    tt = torch.full((2 * n,), int(t), device=x.device, dtype=torch.long)
    out = unet(torch.cat([x, x]), tt, torch.cat([uncond, cond])).sample
    e_uncond, e_cond = out[:n], out[n:]
    return e_uncond + guidance * (e_cond - e_uncond)


@torch.no_grad()
def sample(
    unet,
    parts: DiffusionParts,
    prompts: list[str],
    steps: int,
    guidance: float,
    generator: torch.Generator | None,
    stop_after: int | None = None,
    seeds: list[int] | None = None,
    kind: str = "ddim",
    cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sampler (`kind`: ddim | pndm) for `stop_after` of `steps` steps (all when None).

    The initial noise comes from `generator`, or, with `seeds`, image i's noise from its own
    seed: DDIM is deterministic, so an image is then a function of (model, prompt, seed) alone
    and images of two models pair up by prompt and seed (PNDM too: its multistep history
    starts afresh in every call). `cond`: the prompts' text conditioning when it is not their
    plain encoding (an adversarial prefix, harness/robustness); `prompts` then only count images.

    Returns (x, t): the UNet-space sample and the timestep it is at (the final images when the
    sampler ran to the end: decode with `parts.decode`)."""
    sampler = make_sampler(parts, steps, kind)
    device = parts.device
    cond = parts.encode_prompts(list(prompts)) if cond is None else cond
    uncond = parts.encode_prompts([""] * len(prompts))
    if seeds is None:
        shape = parts.latent_shape(1)[1:]
        x = batch_draw(lambda m: torch.randn((m, *shape), generator=generator), len(prompts))
    else:
        shape = parts.latent_shape(1)[1:]
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    x = x.to(device) * sampler.init_noise_sigma
    timesteps = sampler.timesteps
    n = len(timesteps) if stop_after is None else stop_after
    for t in timesteps[:n]:
        eps = cfg_prediction(unet, x, t, cond, uncond, guidance)
        x = sampler.step(eps, t, x).prev_sample
    t_now = timesteps[n] if n < len(timesteps) else torch.tensor(0)
    return x, torch.full((len(prompts),), int(t_now), device=device, dtype=torch.long)
