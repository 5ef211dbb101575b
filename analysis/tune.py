"""Tuning studies compared: each study's Pareto front, its hypervolume with a bootstrap interval,
hyperparameter importance, optimisation history, and where the sweep's hand-picked point lies.

    python -m analysis.tune --out-dir outputs [--study NAME ...] [--reference fid=8,presence/erased=100]

- Fronts: a study's feasible COMPLETE trials (its constraints hold) that no other feasible
  trial beats on every objective. Values come from the trials' cells (results.json), with the
  evaluation standard error each cell recorded (`se/<metric>`).
- Hypervolume: of the front against one reference point for every study compared (given, or
  the worst feasible value of each objective over all studies plus 10% of its range, printed);
  maximised objectives are negated. Its interval is a basic (reverse-percentile) bootstrap over
  evaluation noise: every trial's objectives redrawn from N(value, se^2) within the metric's
  range, the front and hypervolume recomputed `--boot` times, and the 2.5–97.5 percentiles q of
  the redrawn hypervolumes reflected about the recorded one: [2·hv − q97.5, 2·hv − q2.5].
  Why reflected: a front is a best-of selection, so noise makes it look better than it is, and
  redrawing adds that optimism a second time (the redrawn hypervolumes sit above the recorded
  one by about the amount the recorded one sits above the truth; the mean shift is reported as
  `bias`). The reflection corrects for it. `python -m analysis.tune --coverage` measures it on
  synthetic studies whose true values are known: the reflected interval covered the true
  hypervolume in 93.5% of 200 studies (seed 1, 300 draws each), the plain percentile
  interval in 67.5%.
  Which trials are feasible is judged at their recorded values and held fixed: redrawing the
  constraint flips trials near its bound in and out, a jump the bootstrap does not reproduce
  fairly (it once put a study's interval wholly above its recorded hypervolume).
  Training seeds are not resampled (each trial is one training run): the interval is evaluation
  noise only. Two studies differ beyond that noise when the interval of their paired difference
  (reflected the same way) excludes 0.
- Importance: Optuna's default evaluator (PED-ANOVA in Optuna 5) per objective.
- Hand-picked point: the sweep's own setting, enqueued as the study's first trial: on its
  front, or dominated by which front trials.
Outputs under <out_dir>/analysis/tune/ (tune.md, tune.json, fronts.png/pdf, history.png/pdf),
attached to each study's MLflow parent run."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.pareto import front_indices, hypervolume, interval, redraw


@dataclass
class Point:
    trial: int
    cell: str
    params: dict
    values: list[float]  # the objectives, in the study's directions
    se: list[float | None]
    constraint_metrics: dict[str, tuple[float, float]]  # metric -> (value, se)
    feasible: bool = True
    cpu_h: float | None = None  # what its cell cost (results.json cost.cpu_h: training + evaluation)
    reference: tuple[str, float | None] | None = None  # (cell id, cpu_h) of the cell it depends on


@dataclass
class StudyView:
    name: str
    folder: Path
    label: str
    objectives: list[tuple[str, str]]
    constraints: list  # harness.tune.spec.Constraint
    points: list[Point]
    states: dict[str, int]
    hand_picked: int | None
    arguments: list[str]
    parent_run: str | None
    study: object = field(repr=False, default=None)
    budget: int | None = None  # trials COMPLETE it is to have (tune.trials)

    @property
    def finished(self) -> bool:
        return self.budget is None or self.states.get("complete", 0) >= self.budget

    def minimised(self, values) -> list[float]:
        return [v if d == "minimize" else -v for v, (_, d) in zip(values, self.objectives)]


# -- loading ------------------------------------------------------------------------------
def _se(metrics: dict, metric: str, cfg) -> float | None:
    """The recorded evaluation standard error of `metric` (aggregates: of their mean); None
    where the cell records none (model-level metrics: fixed noise draws, no image set)."""
    if metric in ("presence/erased", "presence/retained"):
        names = cfg.concepts.erase if metric.endswith("erased") else cfg.concepts.retain
        ses = [metrics.get(f"se/presence/{n}") for n in names]
        if any(s is None for s in ses):
            return None
        return math.sqrt(sum(s * s for s in ses)) / max(len(ses), 1)
    se = metrics.get(f"se/{metric}")
    return None if se is None else float(se)


def label_of(cfg) -> str:
    """The study's method as tables name it (the method's own label)."""
    from omegaconf import OmegaConf

    from harness.record import method_label
    from harness.tracking import flatten

    return method_label(flatten(OmegaConf.to_container(cfg, resolve=True)))


def load_study(folder: Path) -> StudyView:
    import optuna

    from harness.compose import compose_config
    from harness.tune.spec import parse
    from harness.tune.study import open_study
    from harness.tune.worker import objective_values

    info = json.loads((folder / "study.json").read_text())
    base = compose_config(info["arguments"])
    spec = parse(base)
    study = open_study(info["name"], spec, folder)
    out_dir = Path(base.out_dir)
    points, hand, mine = [], None, info.get("hand_picked")
    for t in study.get_trials(deepcopy=False):
        if mine is not None and hand is None and t.state == optuna.trial.TrialState.COMPLETE and t.params == mine:
            hand = t.number  # the sweep's own point (tune/launch.py queues it)
        if t.state != optuna.trial.TrialState.COMPLETE or not t.user_attrs.get("cell"):
            continue
        results = json.loads((out_dir / "cells" / t.user_attrs["cell"] / "results.json").read_text())
        cfg = base  # the concept set, which the aggregates and their errors need, is never searched
        metrics = objective_values(results["metrics"], cfg)
        values = [float(metrics[m]) for m, _ in spec.objectives]
        se = [_se(metrics, m, cfg) for m, _ in spec.objectives]
        cons = {c.metric: (float(metrics[c.metric]), _se(metrics, c.metric, cfg)) for c in spec.constraints}
        feasible = all(c.value({c.metric: cons[c.metric][0]}) <= 0 for c in spec.constraints)
        cpu_h = (results.get("cost") or {}).get("cpu_h")
        reference = None
        if dep := results.get("depends_on"):
            found = out_dir / "cells" / dep / "results.json"
            reference = (dep, (json.loads(found.read_text()).get("cost") or {}).get("cpu_h") if found.exists() else None)
        points.append(Point(t.number, t.user_attrs["cell"], dict(t.params), values, se, cons, feasible, cpu_h, reference))
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    parent = next((a.split("=", 1)[1] for a in info["arguments"] if a.startswith("tracking.parent_run_id=")), None)
    return StudyView(info["name"], folder, label_of(base), list(spec.objectives), list(spec.constraints), points, states,
                     hand, info["arguments"], parent, study, spec.trials)


def find_studies(out_dir: Path, names: list[str] | None) -> list[Path]:
    """The studies under <out_dir>/optuna: all, or those named by folder (tune_bilevel-89d70799),
    by sweep name when one folder has it (tune_bilevel), or by path."""
    root = out_dir / "optuna"
    found = sorted(p for p in root.glob("*") if (p / "study.json").exists()) if root.is_dir() else []
    if not names:
        return found
    out = []
    for n in names:
        hits = [p for p in found if p.name == n] or [p for p in found if p.name.rsplit("-", 1)[0] == n]
        if len(hits) > 1:
            raise SystemExit(f"error: study {n} is ambiguous under {root}: {', '.join(p.name for p in hits)} (name one)")
        if not hits and not (Path(n) / "study.json").exists():
            raise SystemExit(f"error: no study {n} under {root} (studies: {', '.join(p.name for p in found) or 'none'})")
        out.append(hits[0] if hits else Path(n))
    return out


# -- fronts and hypervolume ----------------------------------------------------------------
def reference_point(studies: list[StudyView], given: dict[str, float]) -> list[float]:
    """Minimised coordinates: `given` (metric -> value, in the metric's own sign), else the worst
    feasible value over all studies plus 10% of the range (1 where the range is 0)."""
    objectives = studies[0].objectives
    ref = []
    for k, (metric, direction) in enumerate(objectives):
        if metric in given:
            ref.append(given[metric] if direction == "minimize" else -given[metric])
            continue
        vals = [s.minimised(p.values)[k] for s in studies for p in s.points if p.feasible]
        if not vals:
            ref.append(1.0)
            continue
        span = max(vals) - min(vals)
        ref.append(max(vals) + (0.1 * span if span > 0 else 1.0))
    return ref


def study_hypervolume(study: StudyView, ref: list[float], draw=None) -> float:
    """The hypervolume of the front of the study's feasible trials; `draw`: per trial, objective
    values replacing the recorded ones (feasibility stays as recorded)."""
    pts = [study.minimised(p.values if draw is None else draw[i]) for i, p in enumerate(study.points) if p.feasible]
    return hypervolume([pts[i] for i in front_indices(pts)], ref) if pts else 0.0


def bootstrap(studies: list[StudyView], ref: list[float], boots: int, seed: int = 0) -> np.ndarray:
    """(boots, studies) hypervolumes with every trial's objectives redrawn from N(value, se²),
    within each metric's range."""
    rng = np.random.default_rng(seed)
    out = np.zeros((boots, len(studies)))
    for b in range(boots):
        for s, study in enumerate(studies):
            draw = [[redraw(rng, m, v, se) for (m, _), v, se in zip(study.objectives, p.values, p.se)] for p in study.points]
            out[b, s] = study_hypervolume(study, ref, draw)
    return out


def history(study: StudyView, ref: list[float]) -> list[tuple[int, float]]:
    """Hypervolume of the front of the trials up to each completed trial (by trial number)."""
    out, seen = [], []
    for p in sorted(study.points, key=lambda p: p.trial):
        if p.feasible:
            seen.append(study.minimised(p.values))
        out.append((p.trial, hypervolume([seen[i] for i in front_indices(seen)], ref) if seen else 0.0))
    return out


def importances(study: StudyView) -> dict[str, dict[str, float]]:
    """Per objective: parameter -> importance (Optuna's default evaluator); {} where it cannot say."""
    import optuna

    out = {}
    if study.study is None:
        return out
    import warnings

    for k, (metric, direction) in enumerate(study.objectives):
        sign = 1.0 if direction == "minimize" else -1.0  # PED-ANOVA: what makes the target low
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                out[metric] = dict(optuna.importance.get_param_importances(study.study, target=lambda t, k=k, s=sign: s * t.values[k]))
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
            out[metric] = {}
    return out


def hand_picked(study: StudyView) -> dict | None:
    """Where the sweep's own point lies: on the front, or which front trials dominate it."""
    mine = next((p for p in study.points if p.trial == study.hand_picked), None)
    if mine is None:
        return None
    feasible = [p for p in study.points if p.feasible]
    front = [feasible[i] for i in front_indices([study.minimised(p.values) for p in feasible])]
    m = study.minimised(mine.values)
    by = [p for p in front if p is not mine and all(a <= b for a, b in zip(study.minimised(p.values), m))]
    return {"trial": mine.trial, "cell": mine.cell, "feasible": mine.feasible, "on_front": any(p is mine for p in front),
            "dominated_by": [p.trial for p in by],
            "best_gain": [min(study.minimised(p.values)[k] for p in by) - m[k] for k in range(len(m))] if by else None}


# -- report ---------------------------------------------------------------------------------
def cost(study: StudyView) -> dict | None:
    """CPU hours the COMPLETE trials took: every cell they trained, each once (a trial's own cell
    and the reference cell it depends on; two-stage's trials share one distilled student, a
    bilevel trial that searches the fine-tuning lr has a reference of its own). The total, and
    the median of trials' own cells. None: not recorded."""
    cells = {}
    for p in study.points:
        cells[p.cell] = p.cpu_h
        if p.reference:
            cells.setdefault(*p.reference)
    hours = [h for h in cells.values() if h is not None]
    own = [p.cpu_h for p in study.points if p.cpu_h is not None]
    return {"total": float(sum(hours)), "median": float(np.median(own)), "cells": len(hours)} if own else None


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _param(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def analyse(studies: list[StudyView], given: dict[str, float], boots: int) -> dict:
    ref = reference_point(studies, given)
    samples = bootstrap(studies, ref, boots)
    hv = [study_hypervolume(study, ref) for study in studies]
    result = {"reference_point": dict(zip([m for m, _ in studies[0].objectives], [r if d == "minimize" else -r for r, (_, d) in zip(ref, studies[0].objectives)])),
              "boots": boots, "studies": []}
    for s, study in enumerate(studies):
        feasible = [p for p in study.points if p.feasible]
        front = [feasible[i] for i in front_indices([study.minimised(p.values) for p in feasible])]
        result["studies"].append({
            "study": study.name, "label": study.label, "states": study.states, "budget": study.budget, "finished": study.finished, "feasible": len(feasible),
            "hypervolume": hv[s], "interval": interval(hv[s], samples[:, s]), "bias": float(samples[:, s].mean() - hv[s]),
            "cpu_h": cost(study),
            "front": [{"trial": p.trial, "cell": p.cell, "values": p.values, "se": p.se, "params": p.params}
                      for p in sorted(front, key=lambda p: study.minimised(p.values))],
            "importance": importances(study), "history": history(study, ref), "hand_picked": hand_picked(study)})
    pairs = []
    for a in range(len(studies)):
        for b in range(a + 1, len(studies)):
            lo, hi = interval(hv[a] - hv[b], samples[:, a] - samples[:, b])
            pairs.append({"a": studies[a].name, "b": studies[b].name, "difference": hv[a] - hv[b],
                          "interval": (lo, hi), "beyond_noise": lo > 0 or hi < 0,
                          "in_progress": not (studies[a].finished and studies[b].finished)})
    result["pairs"] = pairs
    return result


def markdown(result: dict, studies: list[StudyView]) -> str:
    objectives = studies[0].objectives
    names = [m for m, _ in objectives]
    lines = ["# Tuning studies compared", "",
             f"Objectives: {', '.join(f'{m} ({d})' for m, d in objectives)}. Constraints: "
             f"{'; '.join(str(c) for c in studies[0].constraints) or 'none'}. Hypervolume reference point: "
             f"{', '.join(f'{k} = {_fmt(v)}' for k, v in result['reference_point'].items())}; interval: basic (reflected) 95% "
             f"bootstrap over {result['boots']} draws of evaluation noise (objectives redrawn from their recorded standard "
             f"errors; metrics without one held fixed; feasibility as recorded; training seed fixed). Bias: the mean redrawn "
             f"hypervolume minus the recorded one, the optimism the interval corrects for. CPU h: every cell the COMPLETE trials "
             f"trained, their references included, each once (training + evaluation; total, and the median trial's own cell).", "",
             "| study | method | trials | feasible | front | hypervolume | 95% interval | bias | CPU h |", "|---|---|---|---:|---:|---:|---|---:|---|"]
    for s in result["studies"]:
        states = ", ".join(f"{v} {k}" for k, v in sorted(s["states"].items())) + ("" if s["finished"] else f" (in progress: budget {s['budget']})")
        lo, hi = s["interval"]
        c = s["cpu_h"]
        spent = f"{c['total']:.2f} ({c['median']:.3f})" if c else "–"
        lines.append(f"| {s['study']} | {s['label']} | {states} | {s['feasible']} | {len(s['front'])} | {_fmt(s['hypervolume'])} | {_fmt(lo)} – {_fmt(hi)} | {_fmt(s['bias'])} | {spent} |")
    if result["pairs"]:
        lines += ["", "| A − B | hypervolume difference | 95% interval | beyond noise |", "|---|---:|---|---|"]
        for p in result["pairs"]:
            lines.append(f"| {p['a']} − {p['b']} | {_fmt(p['difference'])} | {_fmt(p['interval'][0])} – {_fmt(p['interval'][1])} | {'– (a study is in progress)' if p['in_progress'] else 'yes' if p['beyond_noise'] else 'no'} |")
    for s in result["studies"]:
        lines += ["", f"## {s['study']} ({s['label']})", "", "Front (feasible, non-dominated):", "",
                  "| trial | " + " | ".join(names) + " | parameters | cell |", "|---:|" + "---:|" * len(names) + "---|---|"]
        for p in s["front"]:
            vals = " | ".join(f"{_fmt(v)} ± {_fmt(e)}" if e is not None else f"{_fmt(v)} (no se)" for v, e in zip(p["values"], p["se"]))
            params = ", ".join(f"{k.split('.')[-1]}={_param(v)}" for k, v in p["params"].items())
            lines.append(f"| {p['trial']} | {vals} | {params} | {p['cell']} |")
        hp = s["hand_picked"]
        if hp:
            where = "on the front" if hp["on_front"] else (
                f"dominated by trials {hp['dominated_by']} (best gains: " + ", ".join(f"{m} {_fmt(-g if d == 'maximize' else g)}" for g, (m, d) in zip(hp["best_gain"], objectives)) + ")"
                if hp["dominated_by"] else "off the front, not dominated by a front trial on every objective")
            lines += ["", f"The sweep's own setting (trial {hp['trial']}, cell {hp['cell']}{'' if hp['feasible'] else ', infeasible'}): {where}."]
        for metric, imp in s["importance"].items():
            shown = ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in imp.items()) or "n/a (too few completed trials)"
            lines.append(f"Importance for {metric}: {shown}.")
    return "\n".join(lines) + "\n"


def figures(result: dict, studies: list[StudyView], dest: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from analysis.figures import save  # (headless: it selects the Agg backend)

    paths = []
    objectives = studies[0].objectives
    cmap = plt.get_cmap("tab10")
    if len(objectives) >= 2:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for s, (study, res) in enumerate(zip(studies, result["studies"])):
            colour = cmap(s % 10)
            feasible = [p for p in study.points if p.feasible]
            ax.scatter([p.values[0] for p in feasible], [p.values[1] for p in feasible], color=colour, alpha=0.3, s=14)
            front = res["front"]
            ax.step([p["values"][0] for p in front], [p["values"][1] for p in front], where="post", color=colour,
                    label=f"{res['label']}: HV {_fmt(res['hypervolume'])}")
            ax.scatter([p["values"][0] for p in front], [p["values"][1] for p in front], color=colour, s=24)
            hp = res["hand_picked"]
            if hp:
                mine = next(p for p in study.points if p.trial == hp["trial"])
                ax.scatter([mine.values[0]], [mine.values[1]], marker="*", s=160, color=colour, edgecolor="black")
        ax.set_xlabel(f"{objectives[0][0]} ({objectives[0][1]})")
        ax.set_ylabel(f"{objectives[1][0]} ({objectives[1][1]})")
        ax.set_title("Pareto fronts (★ the sweep's own setting)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths += save(fig, dest, "fronts")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for s, res in enumerate(result["studies"]):
        xs, ys = zip(*res["history"]) if res["history"] else ((), ())
        ax.plot(xs, ys, marker=".", color=cmap(s % 10), label=res["label"])
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume of the front so far")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return paths + save(fig, dest, "history")


def log_to_parents(studies: list[StudyView], result: dict, paths: list[Path]) -> None:
    """Attach the outputs and each study's hypervolume (and interval) to its MLflow parent run."""
    from harness.compose import compose_config
    from harness.tracking import Tracker

    for study, res in zip(studies, result["studies"]):
        if not study.parent_run:
            continue
        tracker = Tracker(compose_config(study.arguments))
        lo, hi = res["interval"]
        tracker.log_metrics(study.parent_run, [{"time": time.time(), "step": 0, "values": {
            "tune/hypervolume": res["hypervolume"], "tune/hypervolume_lo": lo, "tune/hypervolume_hi": hi,
            "tune/front_size": len(res["front"]), "tune/feasible": res["feasible"]}}])
        for path in paths:
            tracker.log_artifact(study.parent_run, path)


def parse_reference(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"error: --reference {text!r}: expected metric=number[,metric=number]") from None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="outputs", help="the tuning run's out_dir (its optuna/ and cells/)")
    parser.add_argument("--study", action="append", help="a study name under <out_dir>/optuna (or its folder); repeat to compare; default: all")
    parser.add_argument("--reference", help="hypervolume reference point, metric=value,... (default: worst feasible + 10%% of the range)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap draws (default 1000)")
    parser.add_argument("--dest", help="output folder (default: <out_dir>/analysis/tune)")
    parser.add_argument("--coverage", action="store_true", help="only measure the intervals' coverage on synthetic studies (no study read)")
    parser.add_argument("--no-log", action="store_true", help="do not attach the outputs to the studies' MLflow parent runs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.coverage:
        from analysis.pareto import coverage

        rates = coverage()
        print("share of 200 synthetic studies whose 95% interval covers the true hypervolume: "
              + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()) + f" ({time.perf_counter() - t0:.0f} s)")
        return 0
    folders = find_studies(Path(args.out_dir), args.study)
    if not folders:
        print(f"error: no tuning study under {Path(args.out_dir) / 'optuna'} (run python -m harness -m sweep=tune_...)", file=sys.stderr)
        return 2
    studies = [load_study(f) for f in folders]
    kinds = {tuple(s.objectives) for s in studies}
    if len(kinds) > 1:
        print(f"error: these studies optimise different objectives ({'; '.join(str(list(k)) for k in kinds)}): compare studies of one kind", file=sys.stderr)
        return 2
    result = analyse(studies, parse_reference(args.reference), args.boot)
    dest = Path(args.dest) if args.dest else Path(args.out_dir) / "analysis" / "tune"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tune.md").write_text(markdown(result, studies))
    (dest / "tune.json").write_text(json.dumps(result, indent=1, default=str))
    paths = [dest / "tune.md", dest / "tune.json", *figures(result, studies, dest)]
    if not args.no_log:
        log_to_parents(studies, result, paths)
    print((dest / "tune.md").read_text())
    print(f"{len(studies)} studies analysed in {time.perf_counter() - t0:.1f} s: {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
