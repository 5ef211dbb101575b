"""The parts of a text-to-image diffusion model that training and evaluation use, behind one
interface for pixel-space (tiny world) and latent-space (SD 2.1) models."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from harness.distributed import batch_draw


@dataclass
class DiffusionParts:
    unet: nn.Module  # the teacher's UNet (students are pruned copies of it)
    text_encoder: nn.Module
    tokenizer: object
    noise_scheduler: object  # training-time scheduler (DDPM): add_noise, get_velocity, alphas
    sampler_config: dict  # scheduler config used to build a sampler (DDIM) for generation
    vae: nn.Module | None = None  # None: the UNet works in pixel space
    prediction_type: str = "epsilon"
    resolution: int = 16
    vae_scale: float = 1.0
    _prompt_cache: dict = field(default_factory=dict, repr=False)
    prompt_cache_size: int = 4096

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> DiffusionParts:
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(device)
        self._prompt_cache.clear()
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings for the UNet's cross-attention. Cached per prompt: the world has
        a finite caption set, and the text encoder is frozen in every method."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            if len(self._prompt_cache) + len(missing) > self.prompt_cache_size:
                self._prompt_cache.clear()
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            hidden = self.text_encoder(ids)[0]
            for prompt, h in zip(missing, hidden):
                self._prompt_cache[prompt] = h
        return torch.stack([self._prompt_cache[p] for p in prompts])

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] to the UNet's input space (latents, or the pixels themselves)."""
        if self.vae is None:
            return images
        dist = self.vae.encode(images).latent_dist
        # dist.sample(generator), with the noise drawn for the global batch (harness.distributed)
        noise = batch_draw(lambda m: torch.randn((m, *dist.mean.shape[1:]), generator=generator, dtype=dist.mean.dtype), len(images))
        return (dist.mean + dist.std * noise.to(dist.mean.device)) * self.vae_scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """UNet-space samples back to images in [-1, 1]."""
        if self.vae is None:
            return x.clamp(-1, 1)
        return self.vae.decode(x / self.vae_scale).sample.clamp(-1, 1)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        channels = self.unet.config.in_channels
        if self.vae is None:
            return (batch, channels, self.resolution, self.resolution)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)  # 8 for SD's VAE
        return (batch, channels, self.resolution // factor, self.resolution // factor)
