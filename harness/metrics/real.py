"""The paper's metric backbones at real scale (`eval.backbone=real`), from local files only.

- FID: clean-fid's Inception (`eval.real.fid_mode`: legacy_pytorch or clean) on the generated
  images, against the reference statistics made once by `python -m harness.metrics.prepare`;
- CLIP score and CP score: CLIP ViT-B/32 (`eval.real.clip`, a transformers CLIP directory);
- CMMD: CLIP ViT-L/14@336 (`eval.real.cmmd_clip`) against the prepared reference embeddings,
  which must come from the same directory (`prepare --clip`);
- CSD: CSD-ViT-L (`eval.real.csd`, the released checkpoint.pth).
Each backbone loads on first use, so a metric computed alone loads only its own. No classifier
knows the paper's artists: concept presence is measured in the Concept World only."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from harness.errors import MissingInputError
from harness.metrics import backbones as B

KEYS = ("reference", "clip", "cmmd_clip", "csd")


def reference_files(folder: str | Path, fid_mode: str, key: str = "eval.real.reference") -> tuple[Path, Path]:
    """The prepared reference's FID statistics and CMMD embeddings, or one line naming what is missing."""
    folder = Path(str(folder)).expanduser()
    stats, embeddings = folder / f"fid_{fid_mode}.npz", folder / "clip_embeddings.npy"
    for path, how in ((stats, f"--fid-mode {fid_mode}"), (embeddings, "--clip <the eval.real.cmmd_clip directory>")):
        if not path.is_file():
            raise MissingInputError(f"{key}={folder}: missing {path.name} (make it with python -m harness.metrics.prepare {how})")
    return stats, embeddings


def check(real) -> None:
    """Every local file `eval.backbone=real` needs, checked before any cell starts."""
    for key in KEYS:
        if real.get(key) in (None, ""):
            raise MissingInputError(f"eval.real.{key} is not set: eval.backbone=real needs local weights and a prepared reference (or eval.backbone=none)")
    if real.fid_mode not in B.FID_MODES:
        raise MissingInputError(f"eval.real.fid_mode={real.fid_mode!r} is not accepted: one of {', '.join(B.FID_MODES)}")
    reference_files(real.reference, real.fid_mode)
    B.require_inception(real.fid_mode)
    for key in ("clip", "cmmd_clip"):
        if not (Path(str(real[key])).expanduser() / "config.json").is_file():
            raise MissingInputError(f"eval.real.{key}={real[key]}: not a transformers CLIP directory (no config.json)")
    made_with = reference_meta(real.reference).get("clip")
    if made_with and Path(made_with) != Path(str(real.cmmd_clip)).expanduser().resolve():
        raise MissingInputError(f"eval.real.cmmd_clip={real.cmmd_clip}: the reference's CMMD embeddings were made with {made_with} (CMMD compares embeddings of one model)")
    if not Path(str(real.csd)).expanduser().is_file():
        raise MissingInputError(f"eval.real.csd={real.csd}: CSD checkpoint not found (CSD-ViT-L checkpoint.pth)")


def reference_meta(folder) -> dict:
    meta = Path(str(folder)).expanduser() / "reference.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _tag(path) -> str:
    """A short, stable name for a backbone file or folder (feature-cache keys, metric records)."""
    if path is None:
        return "unset"
    path = Path(str(path)).expanduser().resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


class RealBackbones:
    scale = "real"
    classifies_styles = False

    def __init__(self, real, device: torch.device | str = "cpu"):
        self.cfg, self.device = real, torch.device(device)
        self.fid_mode = real.fid_mode
        self.names = {"fid": f"inception-{real.fid_mode}", "clip": f"clip-{_tag(real.clip)}",
                      "cmmd": f"clip-{_tag(real.cmmd_clip)}", "style": f"csd-{_tag(real.csd)}"}
        self.cmmd_source = None if real.cmmd_clip is None else str(Path(str(real.cmmd_clip)).expanduser().resolve())

    @cached_property
    def _inception(self):
        return B.inception(self.fid_mode, self.device)

    @cached_property
    def _clip(self):
        return B.ClipEmbedder(self.cfg.clip, self.device)

    @cached_property
    def _cmmd_clip(self):
        return B.ClipEmbedder(self.cfg.cmmd_clip, self.device)

    @cached_property
    def _csd(self):
        return B.CsdEmbedder(self.cfg.csd, self.device)

    def fid_features(self, images: torch.Tensor) -> np.ndarray:
        return B.inception_features(self._inception, self.fid_mode, images, self.device)

    def clip_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._clip.images(images)

    def clip_texts(self, prompts: list[str]) -> torch.Tensor:
        return self._clip.texts(prompts)

    def cmmd_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._cmmd_clip.images(images)

    def style_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self._csd.images(images)

    def reference(self, dataset=None) -> dict:
        """The prepared real reference (the held-out data set is not used: the user's COCO
        folder was resized and embedded once by `harness.metrics.prepare`)."""
        stats_path, embeddings_path = reference_files(self.cfg.reference, self.fid_mode)
        stats = np.load(stats_path)
        embeddings = np.load(embeddings_path)
        source = str(Path(str(self.cfg.reference)).expanduser().resolve())
        return {"fid": (stats["mu"], stats["sigma"]), "cmmd": embeddings, "images": int(stats["count"]), "source": source}
