"""Image-based evaluation of a cell: generate the evaluation sets with fixed seeds, save them
(PNG + prompts + seeds), and measure them with the paper's metrics.

- neutral held-out prompts (quality): FID and CMMD against a fixed reference of real images
  (the world: `eval.reference_images` renders of a stream of their own; real scale: the
  prepared COCO statistics), CLIP score;
- each concept's prompts (erased and retained alike): CLIP score to the concept prompt,
  concept presence (style classifier), and, against the reference model's images for the
  same prompts and seeds (the un-erased distilled model, as in the paper), style similarity
  (CSD) and CP score.

Each value comes with its evaluation noise, `se/<metric>` (harness/metrics/uncertainty.py): the
standard error owed to the finite image set, which the tables add to the spread over training
seeds. Per-image seeds depend on the training seed too, so cells of different seeds draw
independent evaluation noise (and cells of one seed pair up image by image).
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness import metrics as M
from harness.imagesets import ImageSet, load_images, save_images
from harness.metrics import uncertainty as U
from harness.metrics.similarity import per_image_cos
from harness.sampling import sample


def generate(ctx, model, folder: Path, prompts: list[str], seeds: list[int]) -> ImageSet:
    ev = ctx.cfg.eval
    chunks = []
    for i in range(0, len(prompts), ev.batch_size):
        x, _ = sample(model, ctx.parts, prompts[i : i + ev.batch_size], ev.sample_steps, ev.guidance, None,
                      seeds=seeds[i : i + ev.batch_size], kind=ev.sampler)
        chunks.append(ctx.parts.decode(x).cpu())
    return save_images(folder, torch.cat(chunks), prompts, seeds)


CONCEPT_SEED_OFFSET = 50_000  # the concept sets' per-image seeds start here (the neutral set's at 0)


def seeds_for(ev, n: int, offset: int = 0, training_seed: int = 0) -> list[int]:
    """Per-image seeds of an evaluation set: the same for every model of a training seed, so
    images pair up; another training seed draws other images (seed 0 keeps eval.seed's)."""
    return [ev.seed * 100_003 + training_seed * 1_000_003 + offset + i for i in range(n)]


def evaluation_prompts(ctx, concept, n: int) -> list[str]:
    """The first `n` prompts of `concept`'s evaluation set (None: the neutral held-out prompts)."""
    data = ctx.data
    dataset = data.evaluation_set(concept, n) if data.evaluation_set else (data.heldout_neutral if concept is None else data.heldout_concept(concept))
    return [dataset[i]["caption"] for i in range(min(n, len(dataset)))]


def image_metrics(ctx, model, backbones, concepts, reference: Path | None, root: Path | None = None) -> tuple[dict, dict]:
    """Returns (metrics, info): info records backbone, mode, scale and image counts per metric.
    `reference`: the images folder CSD and CP compare with (None: neither is measured);
    `root`: where the generated sets go (default: the cell's images/).
    `backbones`: WorldBackbones or RealBackbones (the same interface, harness/metrics)."""
    ev, names, seed = ctx.cfg.eval, backbones.names, int(ctx.cfg.seed)
    root = root or ctx.folder / "images"
    prompts = evaluation_prompts(ctx, None, ev.neutral_prompts)
    n = len(prompts)
    gen = generate(ctx, model, root / "neutral", prompts, seeds_for(ev, n, training_seed=seed))
    real = backbones.reference(ctx.data.reference_set(ev.reference_images) if ctx.data.reference_set else None)
    base = {"scale": backbones.scale, "images": n}
    against = {"reference": real["source"], "reference_images": real["images"]}
    fid_feats = gen.features(names["fid"], backbones.fid_features)
    clip_img, clip_txt = gen.features(names["clip"], backbones.clip_images), backbones.clip_texts(prompts)
    cmmd_emb = gen.features(names["cmmd"], backbones.cmmd_images)
    metrics = {
        "fid": M.fid_from_features(fid_feats, real["fid"]),
        "clip_score": M.clip_score(clip_img, clip_txt),
        "cmmd": M.cmmd(cmmd_emb, real["cmmd"]),
        "se/fid": U.fid_se(fid_feats, real["fid"], seed=seed),
        "se/clip_score": U.mean_se(100 * per_image_cos(clip_img, clip_txt)),
        "se/cmmd": U.cmmd_se(cmmd_emb, real["cmmd"], seed=seed),
    }
    info = {
        "fid": {**base, "backbone": names["fid"], "mode": backbones.fid_mode, **against},
        "clip_score": {**base, "backbone": names["clip"], "mode": "100*cos"},
        "cmmd": {**base, "backbone": names["cmmd"], "mode": "rbf sigma=10 x1000 biased", **against},
        "se": {"mode": f"standard error over the image set: sd/sqrt(n) for means, Agresti-Coull for percentages, "
                       f"a {U.GROUPS}-group jackknife for FID and CMMD"},
    }
    for concept in concepts:
        prompts = evaluation_prompts(ctx, concept, ev.concept_prompts)
        k = len(prompts)
        folder = root / f"concept_{concept.name}"
        seeds = seeds_for(ev, k, offset=CONCEPT_SEED_OFFSET, training_seed=seed)
        images = generate(ctx, model, folder, prompts, seeds)
        clip_img, clip_txt = images.features(names["clip"], backbones.clip_images), backbones.clip_texts(prompts)
        to_prompt = 100 * per_image_cos(clip_img, clip_txt)
        metrics[f"clip_concept/{concept.name}"] = M.clip_score(clip_img, clip_txt)
        metrics[f"se/clip_concept/{concept.name}"] = U.mean_se(to_prompt)
        if backbones.classifies_styles:
            logits = torch.as_tensor(images.features(f"{names['style']}-logits", backbones.style_logits))
            index = backbones.concept_index(concept.name)
            metrics[f"presence/{concept.name}"] = M.presence_rate(logits, index)
            metrics[f"se/presence/{concept.name}"] = U.proportion_se((logits.argmax(-1) == index).numpy())
        info[f"concept/{concept.name}"] = {**base, "images": k, "backbone": f"{names['clip']}, {names['style']}"}
        ref_folder = reference / f"concept_{concept.name}" if reference is not None else None
        if ref_folder is not None and ref_folder.is_dir():
            ref = load_images(ref_folder)
            if ref.prompts == prompts and ref.seeds == seeds:
                style, ref_style = images.features(names["style"], backbones.style_embeddings), ref.features(names["style"], backbones.style_embeddings)
                ref_clip = ref.features(names["clip"], backbones.clip_images)
                metrics[f"csd/{concept.name}"] = M.style_similarity(style, ref_style)
                metrics[f"cp/{concept.name}"] = M.cp_score(clip_img, ref_clip, clip_txt)
                metrics[f"se/csd/{concept.name}"] = U.mean_se(100 * per_image_cos(style, ref_style))
                metrics[f"se/cp/{concept.name}"] = U.proportion_se((to_prompt < 100 * per_image_cos(ref_clip, clip_txt)).numpy())
    return metrics, info


def render_floor(ctx, backbones, concepts) -> dict:
    """The noise floor of the tables (`floor/<metric>`): every metric measured on the real
    images of the evaluation prompts themselves (a perfect generator), at the evaluation's own
    sizes. FID and CMMD cannot go below these at that size; presence shows how often the
    detector finds a style that is there. Nothing where the data holds no pixels (real scale)."""
    ev, data = ctx.cfg.eval, ctx.data
    if data.evaluation_set is None or data.reference_set is None:
        return {}
    neutral = data.evaluation_set(None, ev.neutral_prompts)
    if not hasattr(neutral, "pixels"):
        return {}
    real = backbones.reference(data.reference_set(ev.reference_images))
    pixels = neutral.pixels[: ev.neutral_prompts]
    fid_feats, clip_img = backbones.fid_features(pixels), backbones.clip_images(pixels)
    clip_txt = backbones.clip_texts(neutral.captions[: len(pixels)])
    out = {
        "floor/fid": M.fid_from_features(fid_feats, real["fid"]),
        "floor/cmmd": M.cmmd(clip_img, real["cmmd"]),
        "floor/clip_score": M.clip_score(clip_img, clip_txt),
        "floor/se/fid": U.fid_se(fid_feats, real["fid"]),
        "floor/se/cmmd": U.cmmd_se(clip_img, real["cmmd"]),
        "floor/se/clip_score": U.mean_se(100 * per_image_cos(clip_img, clip_txt)),
    }
    for concept in concepts:
        styled = data.evaluation_set(concept, ev.concept_prompts)
        pixels = styled.pixels[: ev.concept_prompts]
        clip_img, clip_txt = backbones.clip_images(pixels), backbones.clip_texts(styled.captions[: len(pixels)])
        out[f"floor/clip_concept/{concept.name}"] = M.clip_score(clip_img, clip_txt)
        out[f"floor/se/clip_concept/{concept.name}"] = U.mean_se(100 * per_image_cos(clip_img, clip_txt))
        if backbones.classifies_styles:
            logits = torch.as_tensor(backbones.style_logits(pixels))
            index = backbones.concept_index(concept.name)
            out[f"floor/presence/{concept.name}"] = M.presence_rate(logits, index)
            out[f"floor/se/presence/{concept.name}"] = U.proportion_se((logits.argmax(-1) == index).numpy())
    return out
