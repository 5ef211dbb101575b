"""Metrics on folders of images, as the authors' scripts were used; prints one JSON line.

    python -m harness.metrics fid        --gen DIR --ref DIR
    python -m harness.metrics cmmd       --gen DIR --ref DIR
    python -m harness.metrics clip_score --gen DIR                 (prompts from DIR/prompts.jsonl)
    python -m harness.metrics csd        --gen DIR --ref DIR       (same prompts and seeds, in order)
    python -m harness.metrics cp_score   --gen DIR --ref DIR
    python -m harness.metrics presence   --gen DIR --concept stripes

Backbones: `--weights DIR` holds the Concept World's (default: the shipped ones)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import MissingInputError

METRICS = ("fid", "cmmd", "clip_score", "csd", "cp_score", "presence")
NEEDS_REF = {"fid", "cmmd", "csd", "cp_score"}


def compute(metric: str, gen: Path, ref: Path | None, weights: Path, concept: str | None = None) -> dict:
    from harness import metrics as M
    from harness.imagesets import load_images
    from harness.metrics.world import WorldBackbones

    backbones = WorldBackbones(weights)
    g = load_images(gen)
    r = load_images(ref) if ref else None
    images = g.uint8()
    record = {"metric": metric, "backbone": backbones.name, "scale": "world", "images": len(g)}
    if r is not None:
        record["reference_images"] = len(r)
    if metric == "fid":
        value = M.fid_from_features(backbones.fid_features(images), backbones.fid_features(r.uint8()))
        record["mode"] = "native-resolution"
    elif metric == "cmmd":
        value = M.cmmd(backbones.clip_images(images), backbones.clip_images(r.uint8()))
        record.update(mode="rbf sigma=10 x1000 biased")
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


def main(argv: list[str]) -> int:
    from harness.world.build import WEIGHTS
    from harness.world.render import STYLES

    parser = argparse.ArgumentParser(prog="python -m harness.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("metric", choices=METRICS)
    parser.add_argument("--gen", type=Path, required=True)
    parser.add_argument("--ref", type=Path)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--concept", choices=("plain", *STYLES))
    args = parser.parse_args(argv)
    if args.metric in NEEDS_REF and args.ref is None:
        print(f"error: --ref is required for {args.metric}: a folder of reference images", file=sys.stderr)
        return 2
    if args.metric == "presence" and args.concept is None:
        print("error: --concept is required for presence: one of plain, " + ", ".join(STYLES), file=sys.stderr)
        return 2
    try:
        record = compute(args.metric, args.gen, args.ref, args.weights, args.concept)
    except MissingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
