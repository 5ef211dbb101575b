"""The training section: per-step time and peak memory of every method's step, the harness
against the hand-written loop, bilevel against its FLOP-count theory, and whole-method cost.

    per step:  distill | bilevel (alternating, penalty) × K | two-stage's eraser (ESD, CA) | plain loop
    ratios:    harness distill / plain loop               target ≤ 1.05
               bilevel / distill per lower step            target within 10% of theory, ≤ 1.15 at K = 10
               theory = FLOPs(lower step + the window's upper steps / window) / FLOPs(distill step)
    whole method, N lower steps:  bilevel N·t_bilevel  vs  two-stage N·t_distill + E·t_eraser
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from omegaconf import DictConfig

from harness.bench.measure import PeakMemory, Repeats, round_robin
from harness.bench.steps import (HandWrittenLoop, HarnessLoop, Variant, eraser_stage, method_stage, peak_memory,
                                 plain_batches, step_flops, trainer_for, variant_context)
from harness.context import CellContext, build_context

log = logging.getLogger("harness")

KS = (5, 10, 20)
SOLVERS = (("alternating", "lower", "upper"), ("penalty", "inner", "outer"))


def variants(ks=KS) -> list[Variant]:
    out = [Variant("distill", ["method=distill"], method_stage)]
    for solver, lower, upper in SOLVERS:
        for k in ks:
            out.append(Variant(f"bilevel {solver} K={k}", ["method=bilevel", f"method.solver={solver}", f"method.K={k}"],
                               method_stage, lower, upper))
    # paper_table's upper step: ESD-x on x_t from the frozen teacher's sampler (up to
    # eraser.sampler_steps teacher forwards more per upper step)
    out.append(Variant("bilevel alternating K=10 sampler x_t",
                       ["method=bilevel", "method.K=10", "method.x_source=sampler", "method.upper_params=xattn"],
                       method_stage, "lower", "upper"))
    for eraser in ("esd", "concept_ablation"):
        out.append(Variant(f"eraser {eraser}", ["method=two_stage", f"eraser={eraser}"], eraser_stage, "erase"))
    return out


def base_context(compose, overrides: list[str], folder: Path) -> CellContext:
    """The embedded default's context (world teacher, pruned student, world data)."""
    from harness.validate import validate

    cfg = compose(["method=distill", *overrides])
    validate(cfg)
    return build_context(cfg, folder, require_cell=None)


def run(base: CellContext, compose, overrides: list[str], repeats: int, warmup: int, window: int, ks=KS,
        only: list[str] | None = None, log_every: int = 10, turn_steps: int = 5, lower_steps: int | None = None,
        eraser_steps: int | None = None, say=print) -> dict:
    """Benchmark the variants (all, or those named in `only`) on `base`'s teacher, student and
    data, each with the config `compose(overrides + its own)`. Returns figures and ratios."""
    from harness.validate import validate

    chosen = [v for v in variants(ks) if only is None or v.name in only]
    configs: dict[str, DictConfig] = {}
    for v in chosen:
        configs[v.name] = compose([*overrides, *v.overrides])
        validate(configs[v.name])
    pristine = base.student  # every variant starts from this pruned student

    def stage_of(v: Variant):
        return v.stage(variant_context(base, configs[v.name], pristine))

    say(f"training: FLOPs and peak memory of {len(chosen)} variants, one at a time")
    flops, memory = {}, {}
    window_steps = range(warmup, warmup + window)
    for v in chosen:
        stage = stage_of(v)
        gen = trainer_for(configs[v.name], base.device).generator
        flops[v.name] = {"lower": step_flops(stage, v.optimizer, base.device, [gen(stage, warmup)])}
        if v.upper:
            upper_steps = [s for s in window_steps if v.upper in stage.updates(s)]
            # a sampled x_t costs what its draw says: count the window's own upper steps then
            sampled = configs[v.name].method.get("x_source") == "sampler"
            counted = upper_steps if sampled else upper_steps[:1]
            flops[v.name]["upper"] = step_flops(stage, v.upper, base.device, [gen(stage, s) for s in counted])
            flops[v.name]["upper_steps_in_window"] = len(upper_steps)
        # Peak memory, alone, through the first upper step. It does not depend on K: variants
        # that differ only in K share one measurement (at the smallest K).
        key = tuple(o for o in v.overrides if not o.startswith("method.K="))
        if key not in memory:
            first_upper = next((s + 1 for s in range(warmup + window) if v.upper and v.upper in stage.updates(s)), 2)
            memory[key] = peak_memory(stage_of(v), configs[v.name], base.device, max(first_upper, 2))
        memory[v.name] = memory[key]

    with_plain = "distill" in configs and (only is None or "plain loop" in only)
    batches = plain_batches(base, warmup + window) if with_plain else None
    if with_plain:
        with PeakMemory(base.device) as peak:
            HandWrittenLoop(variant_context(base, configs["distill"], pristine), batches, 2).advance(2)
        memory["plain loop"] = {"peak_gb": peak.gb, "added_gb": peak.added_gb}
    rep = Repeats()
    for r in range(repeats):
        loops = {v.name: HarnessLoop(stage_of(v), configs[v.name], base.device, warmup + window, log_every) for v in chosen}
        if with_plain:
            loops["plain loop"] = HandWrittenLoop(variant_context(base, configs["distill"], pristine), batches, warmup + window)
        if r % 2:  # every other repeat in reverse order: a drift across a round cancels in pairs
            loops = dict(reversed(loops.items()))
        say(f"training: repeat {r + 1}/{repeats}: {len(loops)} loops in turns of {turn_steps} steps, {warmup} + {window} steps each")
        segments = round_robin(loops, turn_steps)
        for name, durations in segments.items():
            rep.add(name, statistics.mean(durations[warmup:warmup + window]))
        say("  " + ", ".join(f"{name} {1000 * rep.values[name][-1]:.0f} ms" for name in segments))
    names = list(rep.values)
    cfg = configs[chosen[0].name]
    upper_cfg = next((configs[v.name] for v in chosen if v.upper), cfg)

    per_step = {name: {"seconds": rep.median(name), "min_max": rep.spread(name), "repeats": rep.values[name]} for name in names}
    for name in names:
        per_step[name].update(memory[name])
    for v in chosen:
        per_step[v.name]["flops_lower"] = flops[v.name]["lower"]
        if v.upper:
            per_step[v.name]["flops_upper"] = flops[v.name]["upper"]
    out = {
        "config": {"overrides": overrides, "batch_size": cfg.finetune.batch_size, "upper_batch_size": upper_cfg.method.get("upper_batch_size"),
                   "eraser_batch_size": cfg.eraser.batch_size, "pruning_ratio": base.prune_report.ratio,
                   "student_params_m": base.prune_report.params_after / 1e6, "teacher_params_m": base.prune_report.params_before / 1e6,
                   "repeats": repeats, "warmup": warmup, "window": window, "log_every": log_every,
                   "turn_steps": turn_steps},
        "per_step": per_step,
    }
    if with_plain:
        out["overhead"] = {"harness_vs_plain": rep.ratio("distill", "plain loop")}
    if "distill" not in configs:
        return out
    bilevel = {}
    for v in chosen:
        if v.upper:
            # per lower step: one lower step, and the window's upper steps spread over it
            per_lower = flops[v.name]["lower"] + flops[v.name]["upper"] * flops[v.name]["upper_steps_in_window"] / window
            theory = per_lower / flops["distill"]["lower"]
            measured = rep.ratio(v.name, "distill")
            bilevel[v.name] = {"K": configs[v.name].method.K, "measured": measured, "theory": theory,
                               "off_theory": measured / theory - 1}
    out["bilevel_vs_distill"] = bilevel
    n = lower_steps or cfg.finetune.steps
    e = eraser_steps or cfg.eraser.steps
    whole = {}
    for v in chosen:
        for eraser in ("esd", "concept_ablation"):
            if v.upper and f"eraser {eraser}" in names:
                two_stage = n * rep.median("distill") + e * rep.median(f"eraser {eraser}")
                whole[f"{v.name} vs two-stage + {eraser}"] = {
                    "bilevel_s": n * rep.median(v.name), "two_stage_s": two_stage, "ratio": n * rep.median(v.name) / two_stage}
    out["whole_method"] = {"lower_steps": n, "eraser_steps": e, "pairs": whole}
    return out
