"""Image-based evaluation of a cell: generate the evaluation sets with fixed seeds, save them
(PNG + prompts + seeds), and measure them with the paper's metrics.

- neutral held-out prompts (quality): FID and CMMD against held-out real images, CLIP score;
- each concept's prompts (erased and retained alike): CLIP score to the concept prompt,
  concept presence (style classifier), and, against the reference model's images for the
  same prompts and seeds (the un-erased distilled model, as in the paper), style similarity
  (CSD) and CP score.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness import metrics as M
from harness.imagesets import ImageSet, load_images, save_images
from harness.sampling import sample


def generate(ctx, model, folder: Path, prompts: list[str], seeds: list[int]) -> ImageSet:
    ev = ctx.cfg.eval
    chunks = []
    for i in range(0, len(prompts), ev.batch_size):
        x, _ = sample(model, ctx.parts, prompts[i : i + ev.batch_size], ev.sample_steps, ev.guidance, None,
                      seeds=seeds[i : i + ev.batch_size])
        chunks.append(ctx.parts.decode(x).cpu())
    return save_images(folder, torch.cat(chunks), prompts, seeds)


def seeds_for(ev, n: int, offset: int = 0) -> list[int]:
    """Per-image seeds of an evaluation set: the same for every model, so images pair up."""
    return [ev.seed * 100_003 + offset + i for i in range(n)]


def image_metrics(ctx, model, backbones, concepts, reference: Path | None, root: Path | None = None) -> tuple[dict, dict]:
    """Returns (metrics, info): info records backbone, mode, scale and image counts per metric.
    `reference`: the images folder CSD and CP compare with (None: neither is measured);
    `root`: where the generated sets go (default: the cell's images/).
    `backbones`: WorldBackbones or RealBackbones (the same interface, harness/metrics)."""
    ev, names = ctx.cfg.eval, backbones.names
    root = root or ctx.folder / "images"
    neutral = ctx.data.heldout_neutral
    n = min(ev.neutral_prompts, len(neutral))
    prompts = [neutral[i]["caption"] for i in range(n)]
    gen = generate(ctx, model, root / "neutral", prompts, seeds_for(ev, n))
    real = backbones.reference(neutral, n)
    base = {"scale": backbones.scale, "images": n}
    against = {"reference": real["source"], "reference_images": real["images"]}
    metrics = {
        "fid": M.fid_from_features(gen.features(names["fid"], backbones.fid_features), real["fid"]),
        "clip_score": M.clip_score(gen.features(names["clip"], backbones.clip_images), backbones.clip_texts(prompts)),
        "cmmd": M.cmmd(gen.features(names["cmmd"], backbones.cmmd_images), real["cmmd"]),
    }
    info = {
        "fid": {**base, "backbone": names["fid"], "mode": backbones.fid_mode, **against},
        "clip_score": {**base, "backbone": names["clip"], "mode": "100*cos"},
        "cmmd": {**base, "backbone": names["cmmd"], "mode": "rbf sigma=10 x1000 biased", **against},
    }
    for concept in concepts:
        dataset = ctx.data.heldout_concept(concept)
        k = min(ev.concept_prompts, len(dataset))
        prompts = [dataset[i]["caption"] for i in range(k)]
        folder = root / f"concept_{concept.name}"
        seeds = seeds_for(ev, k, offset=50_000)
        images = generate(ctx, model, folder, prompts, seeds)
        clip_img, clip_txt = images.features(names["clip"], backbones.clip_images), backbones.clip_texts(prompts)
        metrics[f"clip_concept/{concept.name}"] = M.clip_score(clip_img, clip_txt)
        if backbones.classifies_styles:
            metrics[f"presence/{concept.name}"] = M.presence_rate(images.features(f"{names['style']}-logits", backbones.style_logits),
                                                                  backbones.concept_index(concept.name))
        info[f"concept/{concept.name}"] = {**base, "images": k, "backbone": f"{names['clip']}, {names['style']}"}
        ref_folder = reference / f"concept_{concept.name}" if reference is not None else None
        if ref_folder is not None and ref_folder.is_dir():
            ref = load_images(ref_folder)
            if ref.prompts == prompts and ref.seeds == seeds:
                metrics[f"csd/{concept.name}"] = M.style_similarity(images.features(names["style"], backbones.style_embeddings),
                                                                    ref.features(names["style"], backbones.style_embeddings))
                metrics[f"cp/{concept.name}"] = M.cp_score(clip_img, ref.features(names["clip"], backbones.clip_images), clip_txt)
    return metrics, info
