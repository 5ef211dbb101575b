"""How much each world metric moves when only the evaluation images change: a cell's
evaluation noise, by image-set size, measured on trained models rather than assumed.

    python -m harness.bench.noise --dest docs/bench        # noise.json + noise.md

For each model (the teacher; a distill student trained as `paper_table` trains it, ratio
0.05, seed 0; and the renders themselves, a perfect generator) it generates a pool of images
for held-out prompts, each image with its own seed, splits the pool into disjoint sets of each
size n, and measures every metric on each set. The sd over those sets is the metric's
evaluation noise at size n: what re-running a cell's evaluation with other seeds moves it by.
Beside it: the recorded standard error of the first set (what every cell records as
`se/<metric>`, harness/metrics/uncertainty.py), to check that estimator against the real
spread; CMMD's bias (biased − unbiased estimate); FID as it was measured before (64 images
against the renders of the same 64 prompts); and the generation cost per image, which sets the
price of a size."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.metrics import cmmd, fid_from_features, presence_rate
from harness.metrics import uncertainty as U
from harness.metrics.similarity import per_image_cos

BASE = ["sweep=paper_table", "pruning.ratio=0.05", "seed=0", "tracking.enabled=false", "eval.backbone=none",
        "runtime.progress=false"]  # with the baseline method (distillation)


def trained_student(work: Path, overrides: list[str]):
    """The distill cell of `paper_table` at ratio 0.05 (trained here, or found done)."""
    from harness.compose import compose_config
    from harness.cell import Cell
    from harness.context import build_context
    from harness.pruning import load_pruned
    from harness.runner import run_cell

    from harness.method import baseline_method

    cfg = compose_config([*BASE, f"method={baseline_method().name}", f"out_dir={work}", *overrides])
    run_cell(cfg)
    cell = Cell(cfg)
    ctx = build_context(cfg, cell.dir, None)
    student, _ = load_pruned(cell.dir / "student")
    return ctx, student.to(ctx.device).eval()


def chunks(n_pool: int, size: int) -> list[slice]:
    return [slice(i * size, (i + 1) * size) for i in range(n_pool // size)]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None, "sets": len(values)}


def neutral_noise(fid_feats, clip_img, clip_txt, ref, sizes, same_prompt_renders=None) -> dict:
    out = {}
    for n in sizes:
        sets = chunks(len(fid_feats), n)
        if len(sets) < 2:
            continue
        fid = [fid_from_features(fid_feats[s], ref["fid"]) for s in sets]
        cm = [cmmd(clip_img[s], ref["cmmd"]) for s in sets]
        clip = [100 * float(per_image_cos(clip_img[s], clip_txt[s]).mean()) for s in sets]
        first = sets[0]
        row = {
            "fid": {**spread(fid), "se": U.fid_se(fid_feats[first], ref["fid"])},
            "cmmd": {**spread(cm), "se": U.cmmd_se(clip_img[first], ref["cmmd"]),
                     "bias": cm[0] - U.cmmd_unbiased(clip_img[first], ref["cmmd"])},
            "clip_score": {**spread(clip), "se": U.mean_se(100 * per_image_cos(clip_img[first], clip_txt[first]))},
        }
        if same_prompt_renders is not None and n <= 128:  # the old protocol: n images against the renders of their n prompts
            row["fid_same_prompts"] = spread([fid_from_features(fid_feats[s], same_prompt_renders[s]) for s in sets])
        out[n] = row
    return out


def presence_noise(logits, index: int, sizes) -> dict:
    out = {}
    hits = (torch.as_tensor(logits).argmax(-1) == index).numpy()
    for n in sizes:
        sets = chunks(len(hits), n)
        if len(sets) < 2:
            continue
        out[n] = {**spread([presence_rate(torch.as_tensor(logits)[s], index) for s in sets]), "se": U.proportion_se(hits[sets[0]])}
    return out


def pool_images(ctx, model, folder: Path, prompts, seeds):
    """The pool's images: generated, or read back when a previous run left them (same prompts
    and seeds), so the analysis can be re-run without generating again. Returns (set, seconds
    it took to generate)."""
    from harness.image_eval import generate
    from harness.imagesets import load_images

    timing = folder / "generation.json"
    if (folder / "prompts.jsonl").is_file() and timing.is_file():
        found = load_images(folder)
        if found.prompts == list(prompts) and found.seeds == list(seeds):
            return found, json.loads(timing.read_text())["seconds"]
    t = time.perf_counter()
    images = generate(ctx, model, folder, prompts, seeds)
    seconds = time.perf_counter() - t
    timing.write_text(json.dumps({"seconds": seconds, "images": len(prompts)}))
    return images, seconds


def measure(args) -> dict:
    from harness.image_eval import CONCEPT_SEED_OFFSET, seeds_for
    from harness.metrics.world import WorldBackbones

    work = Path(args.work or tempfile.mkdtemp(prefix="harness-noise-"))
    t0 = time.perf_counter()
    ctx, student = trained_student(work, [f"eval.batch_size={args.batch}", *args.set])
    train_s = time.perf_counter() - t0
    backbones = WorldBackbones(None, ctx.device)
    ref = backbones.reference(ctx.data.reference_set(args.reference))
    names = backbones.names
    ev = ctx.cfg.eval
    neutral = ctx.data.evaluation_set(None, args.pool)
    prompts = neutral.captions[: args.pool]
    seeds = seeds_for(ev, args.pool, training_seed=1000)  # seeds no cell uses
    clip_txt = backbones.clip_texts(prompts)
    renders = neutral.pixels[: args.pool]
    render_fid = backbones.fid_features(renders)
    result = {"pool": args.pool, "concept_pool": args.concept_pool, "reference_images": ref["images"],
              "sample_steps": ev.sample_steps, "train_seconds": train_s, "models": {}}
    models = {"renders": None, "teacher": ctx.teacher.eval(), f"{ctx.cfg.method.name} (ratio 0.05, {ctx.cfg.finetune.steps} steps)": student}
    generated, gen_seconds = 0, 0.0
    for name, model in models.items():
        if model is None:
            fid_feats, clip_img = render_fid, backbones.clip_images(renders)
        else:
            images, seconds = pool_images(ctx, model, work / "pools" / name.split()[0] / "neutral", prompts, seeds)
            fid_feats = images.features(names["fid"], backbones.fid_features)
            clip_img = images.features(names["clip"], backbones.clip_images)
            generated, gen_seconds = generated + len(prompts), gen_seconds + seconds
        entry = {"neutral": neutral_noise(fid_feats, clip_img, clip_txt, ref, args.sizes, render_fid), "presence": {}}
        for concept in args.concepts:
            from harness import concepts as registry

            c = registry.get("world", concept)
            data = ctx.data.evaluation_set(c, args.concept_pool)
            c_prompts = data.captions[: args.concept_pool]
            if model is None:
                logits = backbones.style_logits(data.pixels[: args.concept_pool])
            else:
                images, seconds = pool_images(ctx, model, work / "pools" / name.split()[0] / concept, c_prompts,
                                              seeds_for(ev, args.concept_pool, offset=CONCEPT_SEED_OFFSET, training_seed=1000))
                logits = images.features(f"{names['style']}-logits", backbones.style_logits)
                generated, gen_seconds = generated + len(c_prompts), gen_seconds + seconds
            entry["presence"][concept] = presence_noise(logits, backbones.concept_index(concept), args.concept_sizes)
        result["models"][name] = entry
        print(f"{name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    result["generation"] = {"images": generated, "seconds": gen_seconds, "images_per_s": generated / gen_seconds,
                            "batch_size": args.batch}
    result["seconds"] = time.perf_counter() - t0
    return result


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}g}"


def markdown(r: dict) -> str:
    lines = ["# Evaluation noise of the world's metrics, by image-set size",
             "",
             f"Pools of {r['pool']} neutral and {r['concept_pool']} concept images per model (one seed per image), split "
             f"into disjoint sets of n; reference: {r['reference_images']} renders; DDIM {r['sample_steps']} steps. "
             f"sd = spread over the sets (sets = how many); se = the recorded standard error of the first set (jackknife for FID and CMMD, what cells record). "
             f"Generation: {r['generation']['images_per_s']:.1f} images/s at batch {r['generation']['batch_size']}.",
             ""]
    for model, entry in r["models"].items():
        lines += [f"## {model}", "", "| n | FID mean | FID sd | FID se | CMMD mean | CMMD sd | CMMD se | CMMD bias | CLIP sd | CLIP se | sets | FID vs same-prompt renders (old) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n, row in sorted(entry["neutral"].items(), key=lambda kv: int(kv[0])):
            f, c, cl = row["fid"], row["cmmd"], row["clip_score"]
            old = row.get("fid_same_prompts")
            lines.append(f"| {n} | {fmt(f['mean'])} | {fmt(f['sd'], 2)} | {fmt(f['se'], 2)} | {fmt(c['mean'])} | {fmt(c['sd'], 2)} | "
                         f"{fmt(c['se'], 2)} | {fmt(c['bias'], 2)} | {fmt(cl['sd'], 2)} | {fmt(cl['se'], 2)} | {f['sets']} | "
                         f"{fmt(old['mean']) + ' ± ' + fmt(old['sd'], 2) if old else '–'} |")
        lines += ["", "| concept | n | presence mean | sd | se | sets |", "|---|---:|---:|---:|---:|---:|"]
        for concept, rows in entry["presence"].items():
            for n, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {concept} | {n} | {fmt(row['mean'])} | {fmt(row['sd'], 2)} | {fmt(row['se'], 2)} | {row['sets']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench.noise", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default="outputs/bench", help="folder for noise.json and noise.md")
    p.add_argument("--work", default=None, help="folder for the trained cell and the image pools (default: a private temp folder)")
    p.add_argument("--pool", type=int, default=2048)
    p.add_argument("--concept-pool", type=int, default=512)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128, 256, 512, 1024])
    p.add_argument("--concept-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256])
    p.add_argument("--concepts", type=lambda s: s.split(","), default=["stripes", "outline"])
    p.add_argument("--reference", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--set", action="append", default=[], help="a config override for the trained cell (repeatable)")
    args = p.parse_args(argv)
    result = measure(args)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "noise.json").write_text(json.dumps(result, indent=1, default=float))
    (dest / "noise.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
