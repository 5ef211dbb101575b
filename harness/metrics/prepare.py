"""Prepare the reference side of a real image set once, so that a real-scale table needs only
the user's image folder and local backbone weights.

    python -m harness.metrics.prepare --images coco/images/val2017 --out refs/coco_val2017_512 \\
        --resolution 512 --num 5000 [--fid-mode legacy_pytorch] [--resize squash|crop] [--clip /path/to/clip-vit-large-patch14-336]

1. resize every image to `resolution` × `resolution`, saved as PNG, by one of two policies:
   `squash` (bicubic to the square, aspect ratio not kept: what the authors'
   resize_and_save_images script did; the default for `legacy_pytorch`, the authors' FID mode)
   or `crop` (shorter side to `resolution`, then a centre crop; the default for `clean`);
2. clean-fid Inception statistics of those images (mu, sigma) in `fid_<mode>.npz`;
3. CLIP image embeddings for CMMD in `clip_embeddings.npy` (with --clip).
A backbone that is not on disk stops its step with one line naming where it was looked for."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.errors import MissingInputError
from harness.imagesets import SUFFIXES


RESIZE_POLICIES = ("squash", "crop")


def resize_image(im: Image.Image, resolution: int, policy: str) -> Image.Image:
    im = im.convert("RGB")
    if policy == "squash":
        return im.resize((resolution, resolution), Image.BICUBIC)
    w, h = im.size
    scale = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    left, top = (im.size[0] - resolution) // 2, (im.size[1] - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def resize_folder(src: Path, dst: Path, resolution: int, num: int | None, policy: str = "squash") -> list[Path]:
    if not src.is_dir():
        raise MissingInputError(f"--images={src}: no such folder")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in SUFFIXES)[: num or None]
    if not files:
        raise MissingInputError(f"--images={src}: no images ({', '.join(SUFFIXES)}) in it")
    dst.mkdir(parents=True, exist_ok=True)
    marker = dst.with_name(dst.name + ".resize")  # images resized by another policy or size are redone, not reused
    made_by = f"{policy} {resolution}"
    redo = not marker.is_file() or marker.read_text() != made_by
    out = []
    for path in files:
        target = dst / (path.stem + ".png")
        if redo or not target.exists():
            with Image.open(path) as im:
                resize_image(im, resolution, policy).save(target)
        out.append(target)
    marker.write_text(made_by)
    return out


def fid_stats(folder: Path, out: Path, mode: str, device: torch.device, batch_size: int = 64) -> Path:
    from cleanfid.fid import get_folder_features

    from harness.metrics.backbones import inception
    from harness.metrics.distribution import frechet_stats

    extractor = inception(mode, device)
    feats = get_folder_features(str(folder), extractor, num_workers=0, batch_size=batch_size, device=device, mode=mode, verbose=False)
    mu, sigma = frechet_stats(feats)
    path = out / f"fid_{mode}.npz"
    np.savez(path, mu=mu, sigma=sigma, count=len(feats))
    return path


def clip_embeddings(files: list[Path], out: Path, clip_path: Path, device: torch.device, batch_size: int = 64) -> Path:
    from harness.metrics.backbones import ClipEmbedder

    embedder = ClipEmbedder(clip_path, device)
    chunks = []
    for i in range(0, len(files), batch_size):
        images = [Image.open(p).convert("RGB") for p in files[i : i + batch_size]]
        chunks.append(embedder.images(images).numpy())
    path = out / "clip_embeddings.npy"
    np.save(path, np.concatenate(chunks))
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.metrics.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--num", type=int, default=None)
    parser.add_argument("--fid-mode", choices=("legacy_pytorch", "clean", "none"), default="legacy_pytorch")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default=None,
                        help="squash: bicubic to the square, as the authors' script (default for legacy_pytorch); "
                             "crop: shorter side, then centre crop (default for clean)")
    parser.add_argument("--clip", type=Path, default=None, help="a local transformers CLIP directory (for CMMD)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    record = {"out": str(args.out)}
    try:
        policy = args.resize or ("crop" if args.fid_mode == "clean" else "squash")
        files = resize_folder(args.images, args.out / "images", args.resolution, args.num, policy)
        record.update(images=len(files), resolution=args.resolution, resize=policy)
        if args.fid_mode != "none":
            record["fid_mode"] = args.fid_mode
            record["fid_stats"] = str(fid_stats(args.out / "images", args.out, args.fid_mode, device))
        if args.clip is not None:
            record["clip_embeddings"] = str(clip_embeddings(files, args.out, args.clip, device))
            record["clip"] = str(args.clip.expanduser().resolve())  # CMMD compares embeddings of this model only
    except MissingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.out / "reference.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
