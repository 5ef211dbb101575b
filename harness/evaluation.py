"""Evaluation run in every cell after training.

Model-level measurements, each a pure function of the model and fixed seeds:
- `heldout_mse`: plain denoising MSE on held-out neutral data (fixed noise and timesteps),
  for the student and, as the reference, the teacher: quality of fine-tuning.
- `alignment/<concept>`: mean cosine between the student's guidance direction for the
  concept prompt, S(x_t, c) − S(x_t, ∅), and the teacher's, T(x_t, c) − T(x_t, ∅), on
  held-out images of that concept. 1: the concept is rendered as the teacher renders it;
  ≤ 0: suppressed (ESD's target direction is −1).
Image-based metrics (FID, CLIP score, CMMD, CSD, CP, presence) join these (harness/image_eval.py)
where `eval.backbone` is world or real.
A sample grid (neutral prompts, then one prompt per concept) is saved as samples.png.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from harness import concepts as concept_registry
from harness.losses import diffusion_target, noisy_inputs
from harness.imagesets import save_grid
from harness.sampling import sample


def _batches(dataset, batch_size: int):
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        yield torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


@torch.no_grad()
def heldout_mse(ctx, model, dataset, batch_size: int, seed: int) -> float:
    parts, total, count = ctx.parts, 0.0, 0
    g = torch.Generator().manual_seed(seed)
    for images, captions in _batches(dataset, batch_size):
        x0 = parts.encode_images(images.to(ctx.device), g)
        x_t, t, noise = noisy_inputs(parts.noise_scheduler, x0, g)
        target = diffusion_target(parts.noise_scheduler, x0, noise, t, parts.prediction_type)
        pred = model(x_t, t, parts.encode_prompts(captions)).sample
        total += F.mse_loss(pred.float(), target.float(), reduction="sum").item() / pred[0].numel()
        count += len(captions)
    return total / max(count, 1)


@torch.no_grad()
def guidance_alignment(ctx, model, dataset, batch_size: int, seed: int, t_range=(200, 800)) -> float:
    parts, sims = ctx.parts, []
    g = torch.Generator().manual_seed(seed)
    for images, captions in _batches(dataset, batch_size):
        x0 = parts.encode_images(images.to(ctx.device), g)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        t = torch.randint(t_range[0], t_range[1], (len(captions),), generator=g).to(ctx.device)
        x_t = parts.noise_scheduler.add_noise(x0, noise, t)
        cond, uncond = parts.encode_prompts(captions), parts.encode_prompts([""] * len(captions))
        xx, tt, cc = torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])
        s = model(xx, tt, cc).sample
        r = ctx.teacher(xx, tt, cc).sample
        n = len(captions)
        d_student, d_teacher = (s[n:] - s[:n]).flatten(1), (r[n:] - r[:n]).flatten(1)
        sims.append(F.cosine_similarity(d_student.float(), d_teacher.float(), dim=1))
    return torch.cat(sims).mean().item()


def eval_concepts(ctx) -> list:
    """The concepts a cell measures: `all` of its domain, its concept `set` (erased + retained),
    or `auto`: the set for an erasing cell (its table shows no other), all for the cells that
    serve every set as references (distill, teacher)."""
    from harness.method import get_method

    which = ctx.cfg.eval.concepts
    if which == "auto":
        which = "set" if get_method(ctx.cfg.method.name).erases else "all"
    if which == "all":
        return list(concept_registry.DOMAINS[ctx.cfg.data.domain].values())
    return ctx.erase + ctx.retain


@torch.no_grad()
def sample_grid(ctx, model, path, concepts) -> None:
    ev = ctx.cfg.eval
    neutral = [ctx.data.heldout_neutral[i]["caption"] for i in range(min(ev.grid_neutral, len(ctx.data.heldout_neutral)))]
    base = neutral[0] if neutral else ""
    prompts = neutral + [c.apply(base) for c in concepts]
    g = torch.Generator().manual_seed(ev.seed)
    x, _ = sample(model, ctx.parts, prompts, ev.sample_steps, ev.guidance, g, kind=ev.sampler)
    images = ((ctx.parts.decode(x) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
    save_grid(images, min(len(prompts), 8), path)


def metric_backbones(ev, device):
    """`eval.backbone`: world (the Concept World's own towers) or real (the paper's, local files)."""
    if ev.backbone == "world":
        from harness.metrics.world import WorldBackbones

        return WorldBackbones(ev.weights, device)
    from harness.metrics.real import RealBackbones

    return RealBackbones(ev.real, device)


def evaluate(ctx, model) -> tuple[dict, dict]:
    """(metrics, info): info records each metric's backbone, mode, scale and image count."""
    ev = ctx.cfg.eval
    model.eval()
    neutral = ctx.data.heldout_neutral
    metrics = {
        "heldout_mse": heldout_mse(ctx, model, neutral, ev.batch_size, ev.seed),
        "teacher_heldout_mse": heldout_mse(ctx, ctx.teacher, neutral, ev.batch_size, ev.seed),
    }
    info = {"heldout_mse": {"backbone": "model-level", "mode": "denoising MSE", "images": len(neutral)}}
    concepts = eval_concepts(ctx)
    for concept in concepts:
        dataset = ctx.data.heldout_concept(concept)
        metrics[f"alignment/{concept.name}"] = guidance_alignment(ctx, model, dataset, ev.batch_size, ev.seed)
        info[f"alignment/{concept.name}"] = {"backbone": "model-level", "mode": "guidance cosine", "images": len(dataset)}
    if ev.grid_neutral or concepts:
        sample_grid(ctx, model, ctx.folder / "samples.png", concepts)
    if ev.backbone != "none":
        from harness.image_eval import image_metrics

        backbones = metric_backbones(ev, ctx.device)
        from harness.method import get_method

        # CSD and CP compare a model's concept images with the un-erased distilled model's (the
        # paper's convention: the distilled row reads 100 / 0); the teacher row has neither.
        method = get_method(ctx.cfg.method.name)
        reference, ref_cfg = None, method.reference(ctx.cfg)
        if ref_cfg is not None:  # finished before this cell started (runner): read, never trained here
            from harness.cell import Cell

            ref_cell = Cell(ref_cfg)
            if not ref_cell.done:
                raise RuntimeError(f"reference cell {ref_cell.id} of cell {ctx.folder.name} is not completed")
            reference = ref_cell.dir / "images"
        elif method.prunes:  # un-erased: its own images are its reference (CSD 100, CP 0)
            reference = ctx.folder / "images"
        more, more_info = image_metrics(ctx, model, backbones, concepts, reference)
        metrics.update(more)
        info.update(more_info)
        from harness import robustness

        if robustness.wanted(ctx.cfg):  # adversarial prompts, relearning, neighbours (harness/robustness)
            more, more_info = robustness.probe(ctx, model, backbones)
            metrics.update(more)
            info.update(more_info)
        if not method.prunes:  # the teacher's cell also measures the floor: real renders as the "generated" images
            from harness.image_eval import render_floor

            metrics.update(render_floor(ctx, backbones, concepts))
    return metrics, info



@torch.no_grad()
def probe(ctx, student, names, step: int) -> dict:
    """The student as it is at `step` of training, measured on what `names` (metric names, as
    a tuning objective names them) needs: held-out MSE always; the neutral image metrics and
    those of the concepts named (`presence/erased`, `presence/retained`: the set's erased or
    retained concepts) when any image metric is named. Images under images/probe/step_<N>/."""
    import copy

    from harness.image_eval import image_metrics

    ev, names = ctx.cfg.eval, set(names)
    model = copy.deepcopy(student).eval()
    values = {"heldout_mse": heldout_mse(ctx, model, ctx.data.heldout_neutral, ev.batch_size, ev.seed)}
    if names - {"heldout_mse"} and ev.backbone != "none":
        wanted = {n.rsplit("/", 1)[-1] for n in names if "/" in n}
        if "presence/erased" in names:
            wanted |= {c.name for c in ctx.erase}
        if "presence/retained" in names:
            wanted |= {c.name for c in ctx.retain}
        concepts = [c for c in eval_concepts(ctx) if c.name in wanted]
        more, _ = image_metrics(ctx, model, metric_backbones(ev, ctx.device), concepts, None,
                                root=ctx.folder / "images" / "probe" / f"step_{step}")
        values.update(more)
    return values


@torch.no_grad()
def recovery(ctx, stage, folder, steps) -> list[tuple[int, dict]]:
    """Quality along training: the student of each checkpoint kept at `steps` (the trainer keeps
    them: TrainConfig.keep_steps), measured on the neutral held-out prompts (held-out MSE, and
    FID, CLIP score and CMMD where image metrics are on). Each set's images go under
    images/recovery/step_<N>/. Returns [(step, {"recovery/<metric>": value})]."""
    import copy

    from harness.image_eval import image_metrics
    from harness.trainer import checkpoints

    ev, found = ctx.cfg.eval, dict(checkpoints(folder))
    model = copy.deepcopy(stage.modules()["student"]).eval()
    backbones = metric_backbones(ev, ctx.device) if ev.backbone != "none" else None
    out = []
    for step in sorted(steps):
        state = torch.load(found[step], map_location="cpu", weights_only=True)
        model.load_state_dict(state["modules"]["student"])
        values = {"heldout_mse": heldout_mse(ctx, model, ctx.data.heldout_neutral, ev.batch_size, ev.seed)}
        if backbones is not None:
            more, _ = image_metrics(ctx, model, backbones, [], None, root=ctx.folder / "images" / "recovery" / f"step_{step}")
            values.update(more)
        out.append((step, {f"recovery/{k}": v for k, v in values.items()}))
    return out
