"""The evaluation section: images/s of generation (the cell's sampler and batch size), of each
backbone's feature extraction, and of each metric on features, at 1k and 10k images, with the
peak memory each one adds (CMMD's kernel sums are blocked: its memory must not grow as N²)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from harness import metrics as M
from harness.bench.measure import PeakMemory, sync
from harness.context import CellContext
from harness.image_eval import seeds_for
from harness.sampling import sample


def _timed(fn, device, repeats: int) -> dict:
    seconds, peak = [], None
    for _ in range(repeats):
        with PeakMemory(device) as peak:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(seconds), "repeats": seconds, "added_gb": peak.added_gb}


def generation(ctx: CellContext, n: int, repeats: int) -> dict:
    """Images/s of the evaluation sampler on the pruned student (batch eval.batch_size)."""
    ev = ctx.cfg.eval
    prompts = [ctx.data.heldout_neutral[i % len(ctx.data.heldout_neutral)]["caption"] for i in range(n)]
    seeds = seeds_for(ev, n)

    @torch.no_grad()
    def run():
        for i in range(0, n, ev.batch_size):
            x, _ = sample(ctx.student, ctx.parts, prompts[i:i + ev.batch_size], ev.sample_steps, ev.guidance, None,
                          seeds=seeds[i:i + ev.batch_size])
            ctx.parts.decode(x).cpu()

    out = _timed(run, ctx.device, repeats)
    return {**out, "images": n, "images_per_s": n / out["seconds"], "sample_steps": ev.sample_steps,
            "guidance": ev.guidance, "batch_size": ev.batch_size}


def _images(ctx: CellContext, n: int) -> torch.Tensor:
    """n uint8 images: the held-out renders, tiled (extraction cost does not depend on content)."""
    data = ctx.data.heldout_neutral
    base = torch.stack([data[i]["image"] for i in range(len(data))])
    base = ((base + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return base.repeat((n + len(base) - 1) // len(base), 1, 1, 1)[:n]


def features_and_metrics(ctx: CellContext, backbones, sizes=(1000, 10000), repeats: int = 3) -> dict:
    """Feature extraction (images/s) per backbone and metric time per metric, per size."""
    out = {}
    device = backbones.device
    for n in sizes:
        images = _images(ctx, n)
        rows = {}
        extractors = {"fid features": backbones.fid_features, "clip image embeddings": backbones.clip_images,
                      "style embeddings": backbones.style_embeddings}
        if backbones.classifies_styles:
            extractors["style logits"] = backbones.style_logits
        feats = {}
        for name, fn in extractors.items():
            r = _timed(lambda fn=fn, name=name: feats.__setitem__(name, fn(images)), device, repeats)
            rows[name] = {**r, "images_per_s": n / r["seconds"]}
        half = n // 2  # two sets of n/2 where a metric compares generated with reference
        fid_f = np.asarray(feats["fid features"])
        clip = torch.as_tensor(feats["clip image embeddings"])
        style = torch.as_tensor(feats["style embeddings"])
        texts = backbones.clip_texts([ctx.data.heldout_neutral[i % len(ctx.data.heldout_neutral)]["caption"] for i in range(n)])
        metrics = {
            "fid": lambda: M.fid_from_features(fid_f[:half], fid_f[half:]),
            "cmmd": lambda: M.cmmd(clip[:half], clip[half:]),
            "clip score": lambda: M.clip_score(clip, texts),
            "cp score": lambda: M.cp_score(clip[:half], clip[half:], texts[:half]),
            "csd": lambda: M.style_similarity(style[:half], style[half:]),
        }
        if backbones.classifies_styles:
            logits = torch.as_tensor(feats["style logits"])
            metrics["presence"] = lambda: M.presence_rate(logits, 0)
        for name, fn in metrics.items():
            r = _timed(fn, device, repeats)
            rows[name] = {**r, "images_per_s": n / r["seconds"]}
        out[str(n)] = rows
    return out
