"""Data sets of the Concept World, rendered in memory from a seed.

- fine-tuning set (the COCO analogue): plain renders only, no style anywhere;
- concept set: renders in the erasable styles, captioned with the style;
- held-out sets (different seed stream): neutral, erased-concept and retained-concept prompts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.concepts import Concept
from harness.world.render import Scene, render, sample_scenes


class RenderedSet(Dataset):
    """Scenes rendered once into a uint8 tensor; items are images in [-1, 1] with captions."""

    def __init__(self, scenes: list[Scene], resolution: int):
        self.scenes = scenes
        self.captions = [s.caption() for s in scenes]
        pixels = np.stack([render(s, resolution) for s in scenes]) if scenes else np.zeros((0, resolution, resolution, 3), np.uint8)
        self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.scenes)

    def _images(self, idx) -> torch.Tensor:
        return self.pixels[idx].float() / 127.5 - 1.0

    def __getitem__(self, i: int) -> dict:
        return {"image": self._images(i), "caption": self.captions[i]}

    def __getitems__(self, idx: list[int]) -> list[dict]:
        images = self._images(torch.tensor(idx))
        return [{"image": im, "caption": self.captions[i]} for im, i in zip(images, idx)]


def _scenes(seed: int, stream: int, n: int, styles) -> list[Scene]:
    return sample_scenes(n, np.random.default_rng([seed, stream]), tuple(styles))


def finetune_set(cfg, resolution: int) -> RenderedSet:
    return RenderedSet(_scenes(cfg.seed, 0, cfg.finetune_size, (None,)), resolution)


def concept_set(cfg, resolution: int, concepts: list[Concept]) -> RenderedSet:
    """Renders of the given styles, mixed uniformly (multi-concept sets)."""
    return RenderedSet(_scenes(cfg.seed, 1, cfg.concept_size * len(concepts), [c.name for c in concepts]), resolution)


def heldout_set(cfg, resolution: int, concepts: list[Concept] | None, n: int) -> RenderedSet:
    """Held-out scenes: plain when `concepts` is None, else in the given styles. The first k
    scenes of a stream are the same whatever n is."""
    styles = (None,) if concepts is None else [c.name for c in concepts]
    stream = 2 if concepts is None else 3  # held-out streams never overlap training streams 0 and 1
    return RenderedSet(_scenes(cfg.seed, stream, n, styles), resolution)


def reference_set(cfg, resolution: int, n: int) -> RenderedSet:
    """Plain renders from a stream of their own (4): the fixed reference set of FID and CMMD,
    as COCO's val2017 images are at real scale."""
    return RenderedSet(_scenes(cfg.seed, 4, n, (None,)), resolution)
