"""Metrics on folders of images, as the authors' scripts were used; prints one JSON line.

    python -m harness.metrics fid        --gen DIR --ref DIR
    python -m harness.metrics cmmd       --gen DIR --ref DIR
    python -m harness.metrics clip_score --gen DIR                 (prompts from DIR/prompts.jsonl)
    python -m harness.metrics csd        --gen DIR --ref DIR       (same prompts and seeds, in order)
    python -m harness.metrics cp_score   --gen DIR --ref DIR
    python -m harness.metrics presence   --gen DIR --concept stripes      (world only)

Backbones: `--scale world` (default) uses the Concept World's (`--weights DIR`, default the
shipped ones); `--scale real` the paper's, from local files: clean-fid Inception
(`--fid-mode`), `--clip` (CLIP score, CP), `--cmmd-clip` (CMMD), `--csd` (CSD). At real scale
`--ref` may be a folder made by `python -m harness.metrics.prepare`: FID then uses its
statistics and CMMD its embeddings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from harness.errors import MissingInputError

METRICS = ("fid", "cmmd", "clip_score", "csd", "cp_score", "presence")
NEEDS_REF = {"fid", "cmmd", "csd", "cp_score"}
BACKBONE_OF = {"fid": "fid", "cmmd": "cmmd", "clip_score": "clip", "cp_score": "clip", "csd": "style", "presence": "style"}
REAL_ARGS = {"clip_score": "clip", "cp_score": "clip", "cmmd": "cmmd_clip", "csd": "csd"}


def prepared(ref: Path | None, backbones, metric: str):
    """A prepared reference's (mu, sigma) or embeddings for `metric`, with its image count; None
    where `ref` is a plain folder of images."""
    from harness.metrics.real import reference_meta

    if ref is None or backbones.scale != "real" or metric not in ("fid", "cmmd") or not reference_meta(ref):
        return None
    meta = reference_meta(ref)
    if metric == "fid":
        path = ref / f"fid_{backbones.fid_mode}.npz"
        if not path.is_file():
            raise MissingInputError(f"--ref={ref}: prepared without {path.name} (prepare it with --fid-mode {backbones.fid_mode})")
        stats = np.load(path)
        return (stats["mu"], stats["sigma"]), int(stats["count"])
    if meta.get("clip") != backbones.cmmd_source:
        raise MissingInputError(f"--ref={ref}: its CMMD embeddings were made with {meta.get('clip')}, not --cmmd-clip {backbones.cmmd_source}")
    embeddings = np.load(ref / "clip_embeddings.npy")
    return embeddings, len(embeddings)


def compute(metric: str, gen: Path, ref: Path | None, backbones, concept: str | None = None) -> dict:
    from harness import metrics as M
    from harness.imagesets import load_images

    g = load_images(gen)
    images = g.uint8()
    record = {"metric": metric, "backbone": backbones.names[BACKBONE_OF[metric]], "scale": backbones.scale, "images": len(g)}
    ready = prepared(ref, backbones, metric)
    r = load_images(ref) if ref is not None and ready is None else None
    if ready is not None:
        record.update(reference=str(ref), reference_images=ready[1])
    elif r is not None:
        record["reference_images"] = len(r)
    if metric == "fid":
        value = M.fid_from_features(backbones.fid_features(images), ready[0] if ready else backbones.fid_features(r.uint8()))
        record["mode"] = backbones.fid_mode
    elif metric == "cmmd":
        value = M.cmmd(backbones.cmmd_images(images), ready[0] if ready else backbones.cmmd_images(r.uint8()))
        record["mode"] = "rbf sigma=10 x1000 biased"
    elif metric == "clip_score":
        if any(p is None for p in g.prompts):
            raise MissingInputError(f"{gen}/prompts.jsonl: clip_score needs a prompt for every image")
        value = M.clip_score(backbones.clip_images(images), backbones.clip_texts(g.prompts))
    elif metric in ("csd", "cp_score"):
        if len(r) != len(g):
            raise MissingInputError(f"--ref={ref}: {len(r)} images, but --gen has {len(g)} (pairs by prompt and seed)")
        if metric == "csd":
            value = M.style_similarity(backbones.style_embeddings(images), backbones.style_embeddings(r.uint8()))
        else:
            value = M.cp_score(backbones.clip_images(images), backbones.clip_images(r.uint8()), backbones.clip_texts(g.prompts))
    else:
        value = M.presence_rate(backbones.style_logits(images), backbones.concept_index(concept))
        record["concept"] = concept
    record["value"] = value
    return record


def backbones_for(args):
    if args.scale == "world":
        from harness.metrics.world import WorldBackbones

        return WorldBackbones(args.weights)
    from omegaconf import OmegaConf

    from harness.metrics.real import RealBackbones

    needed = REAL_ARGS.get(args.metric)
    if needed and getattr(args, needed) is None:
        raise MissingInputError(f"--{needed.replace('_', '-')} is required for {args.metric} at --scale real: a local backbone")
    paths = {k: None if getattr(args, k) is None else str(getattr(args, k)) for k in ("clip", "cmmd_clip", "csd")}
    return RealBackbones(OmegaConf.create({"reference": None, "fid_mode": args.fid_mode, **paths}))


def main(argv: list[str]) -> int:
    from harness.metrics.backbones import FID_MODES
    from harness.world import WEIGHTS
    from harness.world.render import STYLES

    parser = argparse.ArgumentParser(prog="python -m harness.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("metric", choices=METRICS)
    parser.add_argument("--gen", type=Path, required=True)
    parser.add_argument("--ref", type=Path)
    parser.add_argument("--scale", choices=("world", "real"), default="world")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="world: the backbones' folder")
    parser.add_argument("--fid-mode", choices=FID_MODES, default="legacy_pytorch", help="real: clean-fid Inception")
    parser.add_argument("--clip", type=Path, help="real: CLIP ViT-B/32 directory (CLIP score, CP score)")
    parser.add_argument("--cmmd-clip", type=Path, help="real: CLIP ViT-L/14@336 directory (CMMD)")
    parser.add_argument("--csd", type=Path, help="real: CSD-ViT-L checkpoint.pth")
    parser.add_argument("--concept", choices=("plain", *STYLES))
    args = parser.parse_args(argv)
    if args.metric in NEEDS_REF and args.ref is None:
        print(f"error: --ref is required for {args.metric}: a folder of reference images", file=sys.stderr)
        return 2
    if args.metric == "presence" and (args.concept is None or args.scale != "world"):
        print("error: presence is a world metric (--scale world) and needs --concept: one of plain, " + ", ".join(STYLES), file=sys.stderr)
        return 2
    try:
        record = compute(args.metric, args.gen, args.ref, backbones_for(args), args.concept)
    except MissingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
