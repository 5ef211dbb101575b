"""Real-scale metric backbones, from local files only. Each library would download its
weights at first use; here a missing file fails in one line naming where it was looked for.

- Inception (FID), clean-fid's two variants: `legacy_pytorch` (pytorch-fid weights, in torch
  hub's checkpoint folder) and `clean` (the StyleGAN2 torchscript file, in clean-fid's folder).
- CLIP (CLIP score: ViT-B/32; CMMD: ViT-L/14@336): a local transformers CLIPModel directory.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from harness.errors import MissingInputError

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCHSCRIPT_INCEPTION = "inception-2015-12-05.pt"
FID_MODES = ("legacy_pytorch", "clean")


def inception_weights(mode: str) -> Path:
    if mode == "legacy_pytorch":
        return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS
    if mode == "clean":
        return Path("./" if platform.system() == "Windows" else "/tmp") / TORCHSCRIPT_INCEPTION
    raise MissingInputError(f"metrics.fid_mode={mode!r} is not accepted: one of {', '.join(FID_MODES)}")


def inception(mode: str, device: torch.device):
    """clean-fid's Inception feature extractor for `mode`, without any download."""
    path = inception_weights(mode)
    if not path.is_file():
        raise MissingInputError(f"Inception weights for FID mode {mode} not found at {path} (copy {path.name} there; nothing is downloaded)")
    from cleanfid.features import build_feature_extractor

    return build_feature_extractor(mode, device, use_dataparallel=False)


class ClipEmbedder:
    """Image and text embeddings from a local transformers CLIP directory."""

    def __init__(self, path: str | Path, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise MissingInputError(f"CLIP backbone not found at {path} (a transformers CLIPModel directory with config.json; nothing is downloaded)")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.device = device

    @staticmethod
    def _projected(out) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output is the projected embedding
        return (out if torch.is_tensor(out) else out.pooler_output).float().cpu()

    @torch.no_grad()
    def images(self, pil_images) -> torch.Tensor:
        inputs = self.processor(images=pil_images, return_tensors="pt").to(self.device)
        return self._projected(self.model.get_image_features(**inputs))

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        return self._projected(self.model.get_text_features(**inputs))
