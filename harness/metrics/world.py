"""The Concept World's metric backbones, loaded from the build's weights folder.

World CLIP's image tower plays Inception (FID features) and CLIP's image encoder (CLIP score,
CMMD); its text tower encodes prompts; the style descriptor plays CSD (style embeddings) and
gives concept presence (its class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from harness.errors import MissingInputError
from harness.world.towers import STYLE_CLASSES, StyleDescriptor, WorldClip

FILES = ("world_clip.safetensors", "style_descriptor.safetensors")


def world_weights(path: str | Path | None, key: str = "--weights") -> Path:
    """The backbones' folder (None: the shipped one), or one line naming the missing file."""
    if path is None:
        from harness.world import WEIGHTS

        path = WEIGHTS
    folder = Path(str(path)).expanduser()
    for name in FILES:
        if not (folder / name).is_file():
            raise MissingInputError(f"{key}={folder}: missing {name} (build the world backbones with python -m harness.world.build)")
    from harness.models.tiny_weights import backbone_architecture
    from harness.weights import verify

    for name in FILES:
        verify(folder / name, key, lambda name=name: backbone_shapes()[name], backbone_architecture(name))
    return folder


def backbone_shapes() -> dict[str, dict[str, list[int]]]:
    """Tensor names and shapes of each backbone file (modules built on the meta device)."""
    from harness.models.tiny_modules import random_modules
    from harness.models.tiny_weights import tiny_config

    with torch.device("meta"):
        _, text_encoder, _ = random_modules(tiny_config())
        modules = {FILES[0]: WorldClip(text_encoder), FILES[1]: StyleDescriptor()}
    return {name: {k: list(v.shape) for k, v in m.state_dict().items()} for name, m in modules.items()}


_REFERENCES: dict = {}


class WorldBackbones:
    """The same interface as `RealBackbones` (harness/metrics/real.py)."""

    scale = "world"
    classifies_styles = True
    fid_mode = "clean-fid frechet, native resolution"
    names = {"fid": "world-clip-image-tower", "clip": "world-clip", "cmmd": "world-clip", "style": "style-descriptor"}

    def __init__(self, weights: str | Path | None, device: torch.device | str = "cpu", batch_size: int = 256):
        from harness.models.tiny import build_tiny
        from harness.models.tiny_weights import tiny_config

        weights = world_weights(weights)
        self.source = str(weights.resolve())
        parts = build_tiny(tiny_config())
        self.tokenizer, self.device, self.batch_size = parts.tokenizer, torch.device(device), batch_size
        self.clip = WorldClip(parts.text_encoder)
        self.clip.load_state_dict(load_file(str(weights / FILES[0])))
        self.style = StyleDescriptor()
        self.style.load_state_dict(load_file(str(weights / FILES[1])))
        for m in (self.clip, self.style):
            m.to(self.device).eval().requires_grad_(False)

    def _batched(self, fn, images: torch.Tensor) -> torch.Tensor:
        """`images`: (N, 3, H, W) uint8 (or float in 0..255)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].to(self.device).float() / 127.5 - 1.0
            out.append(fn(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def fid_features(self, images) -> np.ndarray:
        return self._batched(self.clip.image_tower, images).double().numpy()

    def fid_extractor(self):
        """For clean-fid's folder pipeline: (B, 3, H, W) in 0..255 → (B, D)."""
        return lambda x: self.clip.image_tower(x.to(self.device).float() / 127.5 - 1.0)

    @torch.no_grad()
    def clip_images(self, images) -> torch.Tensor:
        return self._batched(self.clip.embed_images, images)

    def cmmd_images(self, images) -> torch.Tensor:
        return self.clip_images(images)

    def reference(self, dataset) -> dict:
        """The neutral reference of FID and CMMD: the world's renders in `dataset` (a fixed set
        of its own, data.reference_set), embedded once per process and set."""
        key = (self.source, len(dataset), tuple(dataset.captions[:16]))
        if key not in _REFERENCES:
            images = dataset.pixels  # uint8 renders
            _REFERENCES.clear()  # one reference at a time: a sweep uses one
            _REFERENCES[key] = {"fid": self.fid_features(images), "cmmd": self.clip_images(images), "images": len(images),
                                "source": f"{len(images)} world renders (reference stream)"}
        return _REFERENCES[key]

    @torch.no_grad()
    def clip_texts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return torch.cat([self.clip.embed_texts(ids[i : i + 512].to(self.device)).cpu() for i in range(0, len(ids), 512)])

    @torch.no_grad()
    def style_embeddings(self, images) -> torch.Tensor:
        return self._batched(self.style.embed, images)

    @torch.no_grad()
    def style_logits(self, images) -> torch.Tensor:
        return self._batched(self.style, images)

    @staticmethod
    def concept_index(name: str) -> int:
        return STYLE_CLASSES.index(name)
