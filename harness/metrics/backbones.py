"""Real-scale metric backbones, from local files only. Each library would download its
weights at first use; here a missing file fails in one line naming where it was looked for.

- Inception (FID), clean-fid's two variants: `legacy_pytorch` (pytorch-fid weights, in torch
  hub's checkpoint folder) and `clean` (the StyleGAN2 torchscript file, in clean-fid's folder).
- CLIP (CLIP score: ViT-B/32; CMMD: ViT-L/14@336): a local transformers CLIPModel directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.errors import MissingInputError

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCHSCRIPT_INCEPTION = "inception-2015-12-05.pt"
FID_MODES = ("legacy_pytorch", "clean")


def inception_weights(mode: str) -> Path:
    if mode == "legacy_pytorch":
        return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS
    if mode == "clean":  # beside legacy_pytorch's file, not in clean-fid's shared /tmp
        return Path(torch.hub.get_dir()) / "checkpoints" / TORCHSCRIPT_INCEPTION
    raise MissingInputError(f"fid_mode={mode!r} is not accepted: one of {', '.join(FID_MODES)}")


def require_inception(mode: str) -> Path:
    path = inception_weights(mode)
    if not path.is_file():
        raise MissingInputError(f"Inception weights for FID mode {mode} not found at {path} (copy {path.name} there; nothing is downloaded)")
    return path


def _owned_by_us(path: Path) -> None:
    """TorchScript is code: load it only from a file that no other user could have put or
    changed there (owned by us or root, not group/world-writable, nor its folder)."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
            raise MissingInputError(f"{p} is owned by uid {st.st_uid} or writable by others (mode {st.st_mode & 0o777:o}): "
                                    f"refusing to load TorchScript from it; keep {path.name} in a folder only you can write")


def inception(mode: str, device: torch.device):
    """clean-fid's Inception feature extractor for `mode`, without any download. The clean
    mode's TorchScript file is read from torch's hub folder (clean-fid itself would take
    /tmp/inception-2015-12-05.pt, a path anyone on the machine can plant)."""
    path = require_inception(mode)
    if mode == "clean":
        from cleanfid.inception_torchscript import InceptionV3W

        _owned_by_us(path)
        model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
        return lambda x: model(x)
    from harness.internals import legacy_inception

    return legacy_inception(load_checkpoint_safely(path), device)  # weights-only: torch.hub would unpickle the file


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
    def images(self, images, batch_size: int = 64) -> torch.Tensor:
        """PIL images, or (N, 3, H, W) uint8 tensors; embedded in batches."""
        from PIL import Image

        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            if torch.is_tensor(chunk):
                chunk = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in chunk]
            inputs = self.processor(images=list(chunk), return_tensors="pt").to(self.device)
            out.append(self._projected(self.model.get_image_features(**inputs)))
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), batch_size):
            inputs = self.processor(text=list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                                    truncation=True).to(self.device)
            out.append(self._projected(self.model.get_text_features(**inputs)))
        return torch.cat(out)


def inception_features(extractor, mode: str, images: torch.Tensor, device: torch.device | str = "cpu",
                       batch_size: int = 64) -> "np.ndarray":
    """clean-fid's pipeline on in-memory images: its per-image resize to 299 for `mode`, then the
    Inception pool features (`extractor`: clean-fid's function, on `device`). `images`: (N, 3, H, W) uint8."""
    import numpy as np
    from cleanfid.resize import build_resizer

    resize = build_resizer(mode)
    out = []
    for i in range(0, len(images), batch_size):
        arrays = [resize(im.permute(1, 2, 0).numpy()) for im in images[i : i + batch_size]]
        batch = torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            out.append(extractor(batch.to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


# CSD (Somepalli et al. 2024): OpenAI CLIP ViT-L/14's image tower whose final projection is
# replaced by a learned style head: style = normalize(ln_post(CLS) @ last_layer_style).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def openai_visual_to_transformers(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(config kwargs, state dict) of a transformers CLIPVisionModel from OpenAI CLIP `visual.*`
    keys (prefix stripped): the layout of CSD's checkpoint."""
    width, _, patch, _ = state["conv1.weight"].shape
    grid = round((state["positional_embedding"].shape[0] - 1) ** 0.5)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    config = dict(hidden_size=width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_hidden_layers=layers, num_attention_heads=width // 64 or 1, image_size=patch * grid,
                  patch_size=patch, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    out = {
        "embeddings.class_embedding": state["class_embedding"],
        "embeddings.patch_embedding.weight": state["conv1.weight"],
        "embeddings.position_embedding.weight": state["positional_embedding"],
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
    names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{src}attn.in_proj_{p}"].chunk(3)
            out.update({f"{dst}self_attn.q_proj.{p}": q, f"{dst}self_attn.k_proj.{p}": k, f"{dst}self_attn.v_proj.{p}": v})
            for theirs, ours in names.items():
                out[f"{dst}{ours}.{p}"] = state[f"{src}{theirs}.{p}"]
    return config, out


def load_checkpoint_safely(path: Path) -> dict:
    """A `.pth` checkpoint read without running any code it holds: torch's weights-only
    unpickler, which builds tensors and plain containers only. CSD's released checkpoint also
    stores its training arguments as an `argparse.Namespace`, which is allowed (it only sets
    attributes). Anything else fails in one line naming the file."""
    import argparse
    import pickle

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MissingInputError(f"{path}: not loaded: it holds objects other than tensors and plain values ({first})") from exc


class CsdEmbedder:
    """Style embeddings from CSD's released checkpoint (a local `checkpoint.pth`)."""

    def __init__(self, path: str | Path, device: torch.device, batch_size: int = 64):
        from transformers import CLIPVisionConfig, CLIPVisionModel

        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingInputError(f"CSD checkpoint not found at {path} (CSD-ViT-L checkpoint.pth; nothing is downloaded)")
        raw = load_checkpoint_safely(path)
        raw = raw.get("model_state_dict", raw)
        state = {k.removeprefix("module."): v for k, v in raw.items()}
        if "last_layer_style" not in state or "backbone.conv1.weight" not in state:
            raise MissingInputError(f"{path}: not a CSD checkpoint (no backbone.* and last_layer_style)")
        config, weights = openai_visual_to_transformers({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
        model = CLIPVisionModel(CLIPVisionConfig(**config))
        missing, unexpected = getattr(model, "vision_model", model).load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise MissingInputError(f"{path}: CSD backbone does not map onto CLIP ViT (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model, self.size = model.to(device).eval(), config["image_size"]
        self.style_head = state["last_layer_style"].float().to(device)
        self.device, self.batch_size = device, batch_size

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CSD's transform: resize (bicubic) to the tower's size, centre crop, CLIP normalisation."""
        import torch.nn.functional as F

        x = images.float() / 255.0
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 → (N, D) unit style embeddings."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pooled = self.model(pixel_values=self._pixels(images[i : i + self.batch_size]).to(self.device)).pooler_output
            out.append(torch.nn.functional.normalize(pooled.float() @ self.style_head, dim=-1).cpu())
        return torch.cat(out)
