"""Image sets on disk: PNG files plus `prompts.jsonl` ({"file", "prompt", "seed"} per image).

Generated evaluation sets are saved this way, so every metric can be recomputed later from
the folder alone (`python -m harness.metrics`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.files import write_via

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class ImageSet:
    folder: Path
    files: list[str]
    prompts: list[str | None]
    seeds: list[int | None]

    def __len__(self) -> int:
        return len(self.files)

    def uint8(self, size: int | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 images, optionally resized (bicubic) to size × size."""
        arrays = []
        for name in self.files:
            with Image.open(self.folder / name) as im:
                im = im.convert("RGB")
                if size and im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(im))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def features(self, key: str, extract: Callable[[torch.Tensor], torch.Tensor | np.ndarray]):
        """`extract(self.uint8())`, computed once per image set and `key` (backbone and kind):
        cached in <folder>/.features/, and recomputed when the set's files change. An erasing
        cell's reference images (the distilled model's) are embedded once, not once per cell."""
        digest = self._digest()
        path = self.folder / ".features" / f"{key.replace('/', '_')}.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached.get("digest") == digest:
                return cached["features"].numpy() if cached.get("numpy") else cached["features"]
        features = extract(self.uint8())
        as_numpy = isinstance(features, np.ndarray)
        path.parent.mkdir(exist_ok=True)
        record = {"digest": digest, "features": torch.from_numpy(features) if as_numpy else features, "numpy": as_numpy}
        write_via(path, lambda tmp: torch.save(record, tmp))
        return features

    def _digest(self) -> str:
        h = hashlib.sha256()
        for name in self.files:
            stat = (self.folder / name).stat()
            h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()


def save_images(folder: Path, images: torch.Tensor, prompts: list[str], seeds: list[int]) -> ImageSet:
    """Save images in [-1, 1] (N, 3, H, W) as PNGs with their prompts and seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    files = []
    with open(folder / "prompts.jsonl", "w") as index:
        for i, (array, prompt, seed) in enumerate(zip(pixels, prompts, seeds)):
            name = f"{i:06d}.png"
            Image.fromarray(array).save(folder / name)
            index.write(json.dumps({"file": name, "prompt": prompt, "seed": seed}) + "\n")
            files.append(name)
    return ImageSet(folder, files, list(prompts), list(seeds))


def load_images(folder: Path) -> ImageSet:
    """A folder of images; prompts and seeds from prompts.jsonl where present."""
    folder = Path(folder)
    if not folder.is_dir():
        from harness.errors import MissingInputError

        raise MissingInputError(f"{folder}: no such folder of images")
    index = folder / "prompts.jsonl"
    if index.exists():
        rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        return ImageSet(folder, [r["file"] for r in rows], [r.get("prompt") for r in rows], [r.get("seed") for r in rows])
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    return ImageSet(folder, files, [None] * len(files), [None] * len(files))


def save_grid(images: torch.Tensor, cols: int, path) -> None:
    """(N, 3, H, W) uint8 images as one PNG, `cols` per row, small images scaled up to 64 px."""
    rows = math.ceil(len(images) / cols)
    size = images.shape[-1]
    scale = max(1, 64 // size)
    grid = Image.new("RGB", (cols * size * scale, rows * size * scale))
    for i, im in enumerate(images):
        tile = Image.fromarray(im.permute(1, 2, 0).numpy()).resize((size * scale, size * scale), Image.NEAREST)
        grid.paste(tile, ((i % cols) * size * scale, (i // cols) * size * scale))
    grid.save(path)
