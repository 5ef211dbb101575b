"""The Concept World's own metric backbones.

- `WorldClip`: a CLIP-style pair trained contrastively on world images and captions. Its text
  tower IS the diffusion model's text encoder (a CLIPTextModel); its image tower serves the
  world's FID, CLIP score and CMMD.
- `StyleDescriptor`: the CSD analogue: a classifier over {plain, styles...} whose normalised
  penultimate features are the style embedding; trained on renders degraded the way samples
  are (noise at small t, blur), so imperfect samples are judged by their style, not their noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.world.render import STYLES

STYLE_CLASSES = ("plain", *STYLES)


class ImageTower(nn.Module):
    """A small CNN from (B, 3, 16, 16) images in [-1, 1] to a (B, dim) feature."""

    def __init__(self, dim: int = 64, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.net = nn.Sequential(
            block(3, width, 1), block(width, width, 1),
            block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1),
        )
        self.head = nn.Linear(4 * width * 2, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.net(images)
        # mean and max pooling: a texture (mean) and a frame or dot (max) both count
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1))


class WorldClip(nn.Module):
    def __init__(self, text_encoder: nn.Module, dim: int = 64):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_projection = nn.Linear(text_encoder.config.hidden_size, dim, bias=False)
        self.image_tower = ImageTower(dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as CLIP

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_encoder(input_ids).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)


class StyleDescriptor(nn.Module):
    def __init__(self, dim: int = 64, classes: int = len(STYLE_CLASSES)):
        super().__init__()
        self.tower = ImageTower(dim)
        self.classifier = nn.Linear(dim, classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The style embedding (unit norm): CSD's role."""
        return F.normalize(self.tower(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits over STYLE_CLASSES."""
        return self.classifier(self.tower(images))


def degrade(images: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator, max_t: int = 120,
            p_noise: float = 0.7, p_blur: float = 0.3) -> torch.Tensor:
    """Make clean renders look like imperfect samples: forward noise at a small timestep
    (what a sampler leaves behind) and a light blur (soft edges)."""
    n = images.shape[0]
    t = torch.randint(0, max_t, (n,), generator=generator)
    a = alphas_cumprod[t].view(n, 1, 1, 1).to(images)
    noise = torch.randn(images.shape, generator=generator).to(images)
    noisy = a.sqrt() * images + (1 - a).sqrt() * noise
    use_noise = (torch.rand(n, generator=generator) < p_noise).view(n, 1, 1, 1).to(images)
    out = use_noise * noisy + (1 - use_noise) * images
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16).to(images)
    blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    use_blur = (torch.rand(n, generator=generator) < p_blur).view(n, 1, 1, 1).to(images)
    return (use_blur * blurred + (1 - use_blur) * out).clamp(-1.5, 1.5)
