"""The training section: per-step time and peak memory of every method's step (each method's
`bench_steps`), the harness against the hand-written loop, every step with an upper level
against its FLOP-count theory, and whole-method cost.

    per step:  every method's BenchSteps (the baseline: distill) | plain loop
    ratios:    harness baseline / plain loop                 target ≤ 1.05
               step / baseline per lower step                target within 10% of theory (and ≤ its cap)
               theory = FLOPs(lower step + the window's upper steps / window) / FLOPs(baseline step)
    whole method, N lower steps:  one stage N·t_step  vs  two stages N·t_baseline + E·t_continuing
               (a continuing step trains on from the baseline's cell: two-stage's eraser)
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.bench.measure import PeakMemory, Repeats, round_robin
from harness.bench.steps import (HandWrittenLoop, HarnessLoop, Variant, method_stage, peak_memory, plain_batches, step_flops,
                                 trainer_for, variant_context)
from harness.context import CellContext, build_context
from harness.method import REGISTRY, baseline_method, get_method, method_names

log = logging.getLogger("harness")

KS = (5, 10, 20)


def variants(ks=KS) -> list[Variant]:
    """Every registered method's bench steps, in table order."""
    classes = sorted((REGISTRY[n] for n in method_names()), key=lambda c: (c.order, c.name))
    return [Variant(step, c.baseline, c.continues_reference) for c in classes for step in c.bench_steps(tuple(ks))]


def baseline_name(ks=KS) -> str:
    """The baseline method's (first) bench step."""
    return baseline_method().bench_steps(tuple(ks))[0].name


def gpu_names(ks=KS) -> list[str]:
    """What a GPU run times: the steps marked on_gpu and the hand-written loop."""
    return [v.name for v in variants(ks) if v.step.on_gpu] + ["plain loop"]


def base_context(compose, overrides: list[str], folder: Path) -> CellContext:
    """The embedded default's context (world teacher, pruned student, world data)."""
    from harness.validate import validate

    cfg = compose([f"method={baseline_method().name}", *overrides])
    validate(cfg)
    return build_context(cfg, folder, require_cell=None)


def run(base: CellContext, compose, overrides: list[str], repeats: int, warmup: int, window: int, ks=KS,
        only: list[str] | None = None, log_every: int = 10, turn_steps: int = 5, lower_steps: int | None = None,
        continuing_steps: int | None = None, say=print) -> dict:
    """Benchmark the variants (all, or those named in `only`) on `base`'s teacher, student and
    data, each with the config `compose(overrides + its own)`. Returns figures and ratios."""
    from harness.validate import validate

    chosen = [v for v in variants(ks) if only is None or v.name in only]
    base_name = baseline_name(ks)
    configs: dict[str, DictConfig] = {}
    for v in chosen:
        configs[v.name] = compose([*overrides, *v.overrides])
        validate(configs[v.name])
    pristine = base.student  # every variant starts from this pruned student

    def stage_of(v: Variant):
        return method_stage(variant_context(base, configs[v.name], pristine))

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

    with_plain = base_name in configs and (only is None or "plain loop" in only)
    batches = plain_batches(base, warmup + window) if with_plain else None
    if with_plain:
        with PeakMemory(base.device) as peak:
            HandWrittenLoop(variant_context(base, configs[base_name], pristine), batches, 2).advance(2)
        memory["plain loop"] = {"peak_gb": peak.gb, "added_gb": peak.added_gb}
    rep = Repeats()
    for r in range(repeats):
        loops = {v.name: HarnessLoop(stage_of(v), configs[v.name], base.device, warmup + window, log_every) for v in chosen}
        if with_plain:
            loops["plain loop"] = HandWrittenLoop(variant_context(base, configs[base_name], pristine), batches, warmup + window)
        if r % 2:  # every other repeat in reverse order: a drift across a round cancels in pairs
            loops = dict(reversed(loops.items()))
        say(f"training: repeat {r + 1}/{repeats}: {len(loops)} loops in turns of {turn_steps} steps, {warmup} + {window} steps each")
        segments = round_robin(loops, turn_steps)
        for name, durations in segments.items():
            rep.add(name, statistics.mean(durations[warmup:warmup + window]))
        say("  " + ", ".join(f"{name} {1000 * rep.values[name][-1]:.0f} ms" for name in segments))
    names = list(rep.values)
    cfg = configs[chosen[0].name]
    batch_sizes = {"finetune.batch_size": cfg.finetune.batch_size, "eraser.batch_size": cfg.eraser.batch_size}
    for v in chosen:  # the methods' own batch sizes (bilevel's upper batch)
        for key in get_method(configs[v.name].method.name).batch_keys:
            batch_sizes[key] = OmegaConf.select(configs[v.name], key)

    per_step = {name: {"seconds": rep.median(name), "min_max": rep.spread(name), "repeats": rep.values[name]} for name in names}
    for name in names:
        per_step[name].update(memory[name])
    for v in chosen:
        per_step[v.name]["flops_lower"] = flops[v.name]["lower"]
        if v.upper:
            per_step[v.name]["flops_upper"] = flops[v.name]["upper"]
    out = {
        "config": {"overrides": overrides, "baseline": base_name, "batch_size": cfg.finetune.batch_size,
                   "batch_sizes": batch_sizes, "pruning_ratio": base.prune_report.ratio,
                   "student_params_m": base.prune_report.params_after / 1e6, "teacher_params_m": base.prune_report.params_before / 1e6,
                   "repeats": repeats, "warmup": warmup, "window": window, "log_every": log_every,
                   "turn_steps": turn_steps, "precision": cfg.train.precision, "device": str(base.device)},
        "per_step": per_step,
    }
    if with_plain:
        out["overhead"] = {"harness_vs_plain": rep.ratio(base_name, "plain loop")}
    if base_name not in configs:
        return out
    relative = {}
    for v in chosen:
        if v.upper:
            # per lower step: one lower step, and the window's upper steps spread over it
            upper_per_lower = flops[v.name]["upper_steps_in_window"] / window
            theory = (flops[v.name]["lower"] + flops[v.name]["upper"] * upper_per_lower) / flops[base_name]["lower"]
            measured = rep.ratio(v.name, base_name)
            relative[v.name] = {"measured": measured, "theory": theory, "off_theory": measured / theory - 1,
                                "cap": v.step.cap, "upper_per_lower": upper_per_lower}
    out["vs_baseline"] = relative
    def steps_of(v: Variant) -> int:  # the iterations its method trains in a cell of this config
        return get_method(configs[v.name].method.name).trained_steps(configs[v.name])

    n = lower_steps or steps_of(next(v for v in chosen if v.baseline))
    whole = {}
    for v in chosen:
        for c in chosen:
            if v.upper and c.continues:
                e = continuing_steps or steps_of(c)
                two_stage = n * rep.median(base_name) + e * rep.median(c.name)
                whole[f"{v.name} vs {base_name} + {c.name}"] = {
                    "one_stage_s": n * rep.median(v.name), "two_stage_s": two_stage, "ratio": n * rep.median(v.name) / two_stage,
                    "continuing_steps": e}
    out["whole_method"] = {"lower_steps": n, "pairs": whole}
    return out
