"""Erased or only hidden? Probes of an erasing cell's student beyond "the concept prompt no
longer shows the concept" (`eval.robustness`, off by default; harness/conf/eval/default.yaml).

For each erased concept, on the first `prompts` of its evaluation prompts with their evaluation
seeds (the cell's own concept images, so Pre-ASR reads like presence on those images):
- Pre-ASR: % of prompts whose image shows the concept, no attack;
- ASR (soft) and ASR (discrete): % shown after the prefix attack (harness/robustness/attack.py)
  at each iteration budget, cumulative (an attacker stops at the first success, and never does
  worse than the plain prompt); the discrete attack's prompts are recorded as typed text;
- relearning steps (harness/robustness/relearn.py) until presence is back within `within`
  points of the distilled model's;
and once per cell, neighbours: presence of every other concept of the domain, as a share of
the distilled model's on the same prompts and seeds (erasure that takes its neighbours along).

"Shows the concept" is `metrics.similarity.concept_hits`: the world's style descriptor, or CLIP
zero-shot at real scale. Every draw is seeded from the training seed: the probe is a function
of the cell. What it spent (iterations, images, seconds) is recorded beside the values, and the
found prompts, curves and budgets go to the cell's robustness.json; robustness.png shows, per
erased concept, its first prompts plain, with the soft prefix and with the discrete one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harness.concepts import DOMAINS
from harness.files import write_atomic
from harness.image_eval import CONCEPT_SEED_OFFSET, evaluation_prompts, seeds_for  # the probe's images are the cell's
from harness.imagesets import load_images, save_grid, save_images
from harness.metrics import uncertainty as U
from harness.metrics.similarity import concept_hits
from harness.robustness import floor
from harness.robustness.attack import KINDS, AttackConfig, attack
from harness.robustness.prompts import decode_prefix, encode, prefixed_ids
from harness.robustness.relearn import RelearnConfig, relearn
from harness.sampling import sample

GRID_COLUMNS = 8
PER_CONCEPT = ("pre_asr", "asr_soft", "asr_discrete", "relearn_steps")  # robust/<name>/<concept>, and /erased: their mean


def attack_configs(rb, seed: int) -> dict[str, AttackConfig]:
    common = dict(objective=rb.objective, tokens=int(rb.tokens), iterations=tuple(sorted(int(i) for i in rb.iterations)),
                  lr=float(rb.lr), weight_decay=float(rb.weight_decay), seed=seed)
    return {kind: AttackConfig(kind=kind, **common) for kind in KINDS}


def relearn_config(rb, seed: int) -> RelearnConfig:
    return RelearnConfig(images=int(rb.relearn_images), steps=int(rb.relearn_steps), every=int(rb.relearn_every),
                         lr=float(rb.relearn_lr), within=float(rb.relearn_within), seed=seed)


class _Images:
    """Images of one model for the probe's prompts, at their fixed seeds."""

    def __init__(self, ctx, seeds: list[int]):
        self.ctx, self.seeds = ctx, seeds

    @torch.no_grad()
    def __call__(self, model, prompts: list[str], cond: torch.Tensor | None = None, latent: bool = False) -> torch.Tensor:
        ev, parts, out = self.ctx.cfg.eval, self.ctx.parts, []
        for i in range(0, len(prompts), ev.batch_size):
            part = None if cond is None else cond[i : i + ev.batch_size]
            x, _ = sample(model, parts, prompts[i : i + ev.batch_size], ev.sample_steps, ev.guidance, None,
                          seeds=self.seeds[i : i + ev.batch_size], kind=ev.sampler, cond=part)
            out.append(x if latent else parts.decode(x).cpu())
        return torch.cat(out)


def uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def wanted(cfg) -> bool:
    """Whether the cell of `cfg` is probed: robustness on, an erasing method, image metrics on."""
    from harness.method import get_method

    rb = cfg.eval.get("robustness")
    return bool(rb and rb.enabled and cfg.eval.backbone != "none" and get_method(cfg.method.name).erases)


def budget(cfg) -> dict:
    """What the probes spend and how (recorded with their values; a cell probed at another
    budget is probed again)."""
    rb = cfg.eval.robustness
    return {"prompts": int(rb.prompts), "tokens": int(rb.tokens), "objective": str(rb.objective),
            "iterations": sorted(int(i) for i in rb.iterations), "lr": float(rb.lr), "weight_decay": float(rb.weight_decay),
            "neighbours": bool(rb.neighbours), "floor": bool(rb.floor), "relearn": vars(relearn_config(rb, int(cfg.seed))),
            "sample_steps": int(cfg.eval.sample_steps), "sampler": str(cfg.eval.sampler)}


def work(cfg) -> tuple[int, int]:
    """(images sampled, UNet forwards) the probes of one cell spend at most, for the plan
    (harness/plan.py): per erased concept, the original model's and the student's images, each
    attack's checks, relearning's checks (at most: it stops once the concept is back); the
    attacks' and relearning's steps as forwards (a backward counted as two); the neighbours'
    images and, at most, their references'. All at the student's size (the teacher's images
    are few: an approximation the plan's calibration absorbs)."""
    if not wanted(cfg):
        return 0, 0
    from harness import concepts as registry

    rb = cfg.eval.robustness
    n, erased = int(rb.prompts), len(cfg.concepts.erase)
    checks = 2 * len(rb.iterations) + int(rb.relearn_steps) // int(rb.relearn_every) + 1
    images = erased * n * (2 + checks)
    forwards = erased * 3 * (2 * n * max(int(i) for i in rb.iterations) + int(rb.relearn_steps) * int(rb.relearn_images))
    if rb.floor:  # the floor model's own probes (measured once per out_dir; counted here as if every cell did)
        images, forwards = images + erased * n * (1 + checks), 2 * forwards
    if rb.neighbours:
        images += 2 * n * (len(registry.DOMAINS[cfg.data.domain]) - erased)
    return images, forwards


def is_robustness_metric(name: str) -> bool:
    return name.startswith("robust/") or name.startswith("se/robust/")


def probe(ctx, model, backbones) -> tuple[dict, dict]:
    """The probes of `model` (the cell's student) against the cell's reference: its method's
    `reference` cell (the distilled model), which finished before this cell (runner)."""
    from harness.cell import Cell
    from harness.method import get_method

    ref_cfg = get_method(ctx.cfg.method.name).reference(ctx.cfg)
    images, metrics = None, None
    if ref_cfg is not None and (ref := Cell(ref_cfg)).done:
        images, metrics = ref.dir / "images", ref.results()["metrics"]
    return run(ctx, model, backbones, images, metrics)


def run(ctx, model, backbones, reference: Path | None, reference_metrics: dict | None) -> tuple[dict, dict]:
    """(metrics, info) of the probes; writes images under images/robustness/ and robustness.json.
    `reference`: the distilled model's images folder (neighbours), `reference_metrics` its
    results' metrics (relearning's target); None where the cell has no reference."""
    rb, started = ctx.cfg.eval.robustness, time.perf_counter()
    domain = list(DOMAINS[ctx.cfg.data.domain].values())
    root = ctx.folder / "images" / "robustness"
    metrics, record, grid = {}, {"concepts": {}}, []
    model.eval()
    for ci, concept in enumerate(ctx.erase):
        values, entry, rows = probe_concept(ctx, model, concept, ci, backbones, domain, reference_metrics, root / concept.name)
        metrics.update(values)
        grid.extend(rows)
        if rb.floor:
            values, entry["floor"] = floor.probe(ctx, concept, ci, backbones, domain, reference_metrics)
            metrics.update(values)
        record["concepts"][concept.name] = entry
    for key in PER_CONCEPT:
        for stem in ("robust", "robust/floor") if rb.floor else ("robust",):
            values = [metrics[f"{stem}/{key}/{c.name}"] for c in ctx.erase]
            metrics[f"{stem}/{key}/erased"] = sum(values) / len(values)
    # per erased concept, three rows of its first prompts: plain, soft prefix, discrete prefix
    save_grid(torch.cat(grid), min(GRID_COLUMNS, len(grid[0])), ctx.folder / "robustness.png")
    if rb.neighbours:
        metrics.update(_neighbours(ctx, model, backbones, domain, reference, record))
    record["seconds"] = time.perf_counter() - started
    record["budget"] = budget(ctx.cfg)
    write_atomic(ctx.folder / "robustness.json", json.dumps(record, indent=1))
    info = {"robustness": {"backbone": backbones.names["style"] if backbones.classifies_styles else f"{backbones.names['clip']} zero-shot",
                           "seconds": record["seconds"], "budget": record["budget"]}}
    return metrics, info


def probe_concept(ctx, model, concept, ci: int, backbones, domain, reference_metrics: dict | None, folder: Path,
                  stem: str = "robust") -> tuple[dict, dict, list]:
    """Pre-ASR, both attacks and relearning of `model` for one erased concept (the `ci`-th):
    (metrics under `stem`, the record's entry, the grid's rows); the attacked images are saved
    under `folder`."""
    rb, ev, parts, seed = ctx.cfg.eval.robustness, ctx.cfg.eval, ctx.parts, int(ctx.cfg.seed)
    prompts = evaluation_prompts(ctx, concept, int(rb.prompts))
    seeds = seeds_for(ev, len(prompts), offset=CONCEPT_SEED_OFFSET, training_seed=seed)
    images = _Images(ctx, seeds)
    hits = lambda pixels: concept_hits(backbones, uint8(pixels), concept, domain).cpu()  # noqa: E731
    x0 = images(ctx.teacher, prompts, latent=True)  # the original model's images: what the attack reconstructs
    original = hits(parts.decode(x0).cpu())
    plain_images = images(model, prompts)
    pre = hits(plain_images)
    grid = [uint8(plain_images[:GRID_COLUMNS])]
    name, metrics = concept.name, {}
    entry = {"prompts": prompts, "seeds": seeds, "pre_hits": pre.tolist(), "original_hits": original.tolist()}
    metrics[f"{stem}/pre_asr/{name}"] = 100.0 * pre.double().mean().item()
    metrics[f"se/{stem}/pre_asr/{name}"] = U.proportion_se(pre.numpy())
    for kind, cfg in attack_configs(rb, seed * 1_000 + ci).items():
        success, curve, last = pre.clone(), [], None
        for prefix in attack(parts, model, ctx.teacher, prompts, x0, cfg):
            if kind == "soft":
                with torch.no_grad():
                    cond = encode(parts, prefixed_ids(parts.tokenizer, prompts, cfg.tokens), prefix.embeddings)
                shown, typed = images(model, prompts, cond=cond), [f"<{cfg.tokens} soft tokens> {p}" for p in prompts]
            else:
                typed = [decode_prefix(parts.tokenizer, prefix.tokens[b], p) for b, p in enumerate(prompts)]
                shown = images(model, typed)  # the typed prompt, tokenised as a user's would be
            success |= hits(shown)
            curve.append({"iteration": prefix.iteration, "asr": 100.0 * success.double().mean().item(), "loss": prefix.loss})
            last = (shown, typed)
        save_images(folder / kind, last[0], last[1], seeds)
        grid.append(uint8(last[0][:GRID_COLUMNS]))
        metrics[f"{stem}/asr_{kind}/{name}"] = curve[-1]["asr"]
        metrics[f"se/{stem}/asr_{kind}/{name}"] = U.proportion_se(success.numpy())
        entry[kind] = {"curve": curve, "hits": success.tolist(), **({"found_prompts": last[1]} if kind == "discrete" else {})}
    target, target_from = _relearn_target(reference_metrics, name, original)
    data = ctx.data.heldout_concept(concept)
    n = min(int(rb.relearn_images), len(data))
    items = [data[i] for i in range(n)]
    back = relearn(parts, model, torch.stack([it["image"] for it in items]), [it["caption"] for it in items],
                   lambda m: 100.0 * hits(images(m, prompts)).double().mean().item(), target, relearn_config(rb, seed))
    metrics[f"{stem}/relearn_steps/{name}"] = float(back.steps)
    metrics[f"{stem}/relearned/{name}"] = float(back.back)
    entry["relearn"] = {"target": target, "target_from": target_from, "within": float(rb.relearn_within),
                        "curve": back.curve, "back": back.back, "images": n}
    return metrics, entry, grid


def _relearn_target(reference_metrics: dict | None, name: str, original: torch.Tensor) -> tuple[float, str]:
    """The presence relearning must get back to: the distilled model's (its results), else the
    original model's on the probe's own prompts."""
    if reference_metrics and f"presence/{name}" in reference_metrics:
        return float(reference_metrics[f"presence/{name}"]), "distilled model (reference cell)"
    return 100.0 * original.double().mean().item(), "original model (probe prompts)"


def _neighbours(ctx, model, backbones, domain, reference: Path | None, record: dict) -> dict:
    """Presence of every concept the cell did not erase, and its share of the distilled model's
    (the reference cell's images for the same prompts and seeds; the original model's where the
    reference has none): `robust/neighbour_retention`, pooled over the neighbours."""
    rb, ev, seed = ctx.cfg.eval.robustness, ctx.cfg.eval, int(ctx.cfg.seed)
    erased = {c.name for c in ctx.erase}
    out, kept, had, rows = {}, 0, 0, {}
    for concept in (c for c in domain if c.name not in erased):
        prompts = evaluation_prompts(ctx, concept, int(rb.prompts))
        seeds = seeds_for(ev, len(prompts), offset=CONCEPT_SEED_OFFSET, training_seed=seed)
        images = _Images(ctx, seeds)
        mine = concept_hits(backbones, uint8(images(model, prompts)), concept, domain).cpu()
        ref_folder, source = reference / f"concept_{concept.name}" if reference is not None else None, "original model"
        if ref_folder is not None and ref_folder.is_dir():
            ref = load_images(ref_folder)
            if ref.prompts[: len(prompts)] == prompts and ref.seeds[: len(seeds)] == seeds:
                theirs = concept_hits(backbones, ref.uint8()[: len(prompts)], concept, domain).cpu()
                source = "distilled model (reference cell)"
        if source == "original model":
            theirs = concept_hits(backbones, uint8(images(ctx.teacher, prompts)), concept, domain).cpu()
        out[f"robust/neighbour_presence/{concept.name}"] = 100.0 * mine.double().mean().item()
        kept, had = kept + int(mine.sum()), had + int(theirs.sum())
        rows[concept.name] = {"hits": int(mine.sum()), "reference_hits": int(theirs.sum()), "of": len(prompts), "reference": source}
    if had:
        out["robust/neighbour_retention"] = 100.0 * kept / had
    record["neighbours"] = rows
    return out
