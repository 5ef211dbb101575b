"""The benchmark's figures as Markdown tables (rendered by analysis/render.py)."""

from __future__ import annotations

from harness.render import Column, Table, markdown

TARGETS = {"harness_vs_plain": 1.05, "off_theory": 0.10}  # a step's own cap comes with it (Method.bench_steps)


def _ms(s: float) -> float:
    return s * 1000


def machine_line(m: dict) -> str:
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    return (f"{where}, {m['memory_gb']} GiB; Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}; "
            f"{m['date']}, commit {(m.get('commit') or '?')[:7]}{' with uncommitted changes' if m.get('dirty') else ''}")


def training_tables(t: dict, title: str) -> list[Table]:
    cfg = t["config"]
    rows = []
    for name, r in t["per_step"].items():
        row = {"variant": name, "ms": _ms(r["seconds"]), "range": f"{_ms(r['min_max'][0]):.0f}–{_ms(r['min_max'][1]):.0f}",
               "peak": r["peak_gb"], "added": r["added_gb"]}
        if "flops_lower" in r:
            row["gflop"] = r["flops_lower"] / 1e9
        if "flops_upper" in r:
            row["gflop_up"] = r["flops_upper"] / 1e9
        rows.append(row)
    steps = Table(
        f"{title}: per step (median of {cfg['repeats']} repeats of {cfg['window']} steps after {cfg['warmup']} warm-up, "
        f"loops in turns of {cfg['turn_steps']} steps; "
        f"batch sizes {', '.join(f'{k} {v}' for k, v in cfg['batch_sizes'].items())}; "
        f"student {cfg['student_params_m']:.3g} M of {cfg['teacher_params_m']:.3g} M params)",
        [Column("variant", "variant"), Column("ms / lower step", "ms"), Column("min–max", "range"),
         Column("peak memory GB", "peak"), Column("added GB", "added"), Column("GFLOP lower step", "gflop"),
         Column("GFLOP upper step", "gflop_up")],
        rows)
    tables = [steps]
    ratios = []
    base = cfg["baseline"]
    if "overhead" in t:
        v = t["overhead"]["harness_vs_plain"]
        ratios.append({"what": f"harness {base} step / hand-written loop", "value": v, "target": f"≤ {TARGETS['harness_vs_plain']}",
                       "ok": "yes" if v <= TARGETS["harness_vs_plain"] else "no"})
    for name, b in t.get("vs_baseline", {}).items():
        cap = b.get("cap")
        ok = abs(b["off_theory"]) <= TARGETS["off_theory"] and (cap is None or b["measured"] <= cap)
        target = f"theory {b['theory']:.3f} ± 10%" + (f", ≤ {cap}" if cap is not None else "")
        ratios.append({"what": f"{name} / {base} per lower step", "value": b["measured"], "target": target,
                       "off": f"{100 * b['off_theory']:+.1f}%", "ok": "yes" if ok else "no"})
    whole = t.get("whole_method", {})
    for name, w in whole.get("pairs", {}).items():
        ratios.append({"what": f"{name}: whole method, {whole['lower_steps']} lower steps (+ {w['continuing_steps']} continuing)",
                       "value": w["ratio"], "target": "–", "off": f"{w['one_stage_s']:.0f} s vs {w['two_stage_s']:.0f} s"})
    if ratios:
        tables.append(Table(f"{title}: ratios (median over repeats of the ratio within a repeat)",
                            [Column("ratio", "what"), Column("value", "value"), Column("target", "target"),
                             Column("off theory / seconds", "off"), Column("holds", "ok")], ratios))
    return tables


def evaluation_tables(e: dict) -> list[Table]:
    g = e["generation"]
    tables = [Table(f"Evaluation: generation (DDIM {g['sample_steps']} steps, guidance {g['guidance']}, batch {g['batch_size']}, "
                    f"{g['images']} images)",
                    [Column("images / s", "ips"), Column("seconds", "s"), Column("added GB", "added")],
                    [{"ips": g["images_per_s"], "s": g["seconds"], "added": g["added_gb"]}])]
    rows = []
    for n, figures in e["features_and_metrics"].items():
        for name, r in figures.items():
            rows.append({"what": name, "n": int(n), "ips": r["images_per_s"], "s": r["seconds"], "added": r["added_gb"]})
    tables.append(Table("Evaluation: feature extraction and metrics (median of repeats; metrics compare two halves of the set)",
                        [Column("step", "what"), Column("images", "n"), Column("images / s", "ips"), Column("seconds", "s"),
                         Column("added GB", "added")], rows))
    return tables


def cell_tables(c: dict) -> list[Table]:
    rows = [{"what": "cell wall time (outside the process)", "s": c["wall_s"], "share": 1.0},
            {"what": "training", "s": c["training_s"], "share": c["training_s"] / c["wall_s"]},
            {"what": "evaluation", "s": c["evaluation_s"], "share": c["evaluation_s"] / c["wall_s"]},
            {"what": "fixed overhead (wall − training − evaluation)", "s": c["fixed_s"], "share": c["fixed_share"]}]
    rows += [{"what": f"  {k}", "s": v, "share": v / c["wall_s"]} for k, v in c["parts_s"].items()]
    if sweep := c.get("in_a_sweep"):
        rows.append({"what": f"fixed overhead of each further cell of a local sweep (one process; a sweep of 1 against one of "
                             f"{sweep['sweeps'][max(sweep['sweeps'], key=int)]['cells']} cells)", "s": sweep["per_further_cell_s"],
                     "share": sweep["per_further_cell_s"] / c["wall_s"]})
    rows.append({"what": "once per out_dir: creating the MLflow store (a copy of MLflow's empty one)", "s": c["store_creation_s"]["from template"], "share": None})
    rows.append({"what": "the same store made by MLflow's migrations (before; now once per machine)", "s": c["store_creation_s"]["by MLflow"], "share": None})
    return [Table(f"Per-cell overhead: `python -m harness {' '.join(c['cell'])}` (median of {c['repeats']})",
                  [Column("part", "what"), Column("seconds", "s"), Column("share of the cell", "share")], rows)]


def probe_tables(r: dict) -> list[Table]:
    b = r["budget"]
    cost = [{"what": "training (the cell's stages and its reference cell's)", "s": r["training_s"], "share": 1.0},
            {"what": "robustness probes (their own seconds)", "s": r["probe_s"], "share": r["probe_vs_training"]},
            {"what": "  the probing process, wall (with start-up)", "s": r["probe_wall_s"], "share": r["probe_wall_s"] / r["training_s"]}]
    rows = [{"concept": name, "kind": kind, **{f"i{i}": asr for i, asr in curve}}
            for name, kinds in r["curves"].items() for kind, curve in kinds.items()]
    iterations = b["iterations"]
    return [Table(f"Robustness probes: cost beside training (`python -m harness {' '.join(r['cell'])}`; {b['prompts']} prompts, "
                  f"k = {b['tokens']}, {b['objective']}, relearning ≤ {b['relearn']['steps']} steps)",
                  [Column("part", "what"), Column("seconds", "s"), Column("share of training", "share")], cost),
            Table("Robustness probes: ASR (%) after each attack budget (cumulative; flat at the end = the budget was enough)",
                  [Column("concept", "concept"), Column("attack", "kind"), *[Column(f"{i} it.", f"i{i}") for i in iterations]], rows)]


def gpu_tables(g: dict) -> list[Table]:
    m = g["mfu"]
    rows = [{"variant": k, "ips": v["images_per_s"], "tf": v["tflops_per_s"], "mfu": v["mfu"]} for k, v in m["variants"].items()]
    peak = f"{m['peak_bf16_flops'] / 1e12:.0f} TFLOP/s dense bf16 ({m['peak_matched']})" if m["peak_bf16_flops"] else "peak unknown"
    return [Table(f"GPU: throughput and model-FLOPs utilization (peak {peak}; build {g['build']['build_s']:.0f} s, "
                  f"pruning {g['build']['prune_s']:.0f} s)",
                  [Column("variant", "variant"), Column("training images / s", "ips"), Column("TFLOP/s", "tf"),
                   Column("MFU", "mfu")], rows)]


def render(result: dict) -> str:
    lines = [f"# Benchmarks ({result['kind']})", "", f"Machine: {machine_line(result['machine'])}.", "",
             f"Command: `{result['command']}` ({result['seconds']:.0f} s).", ""]
    tables = []
    if "training" in result:
        tables += training_tables(result["training"], "Training")
    if "gpu" in result:
        tables += training_tables(result["gpu"]["training"], "GPU training") + gpu_tables(result["gpu"])
    if "evaluation" in result:
        tables += evaluation_tables(result["evaluation"])
    if "cell" in result:
        tables += cell_tables(result["cell"])
    if "robustness" in result:
        tables += probe_tables(result["robustness"])
    return "\n".join(lines + [markdown(t) for t in tables])
