"""The paper's figures from a sweep's MLflow runs.

    python -m analysis.figures --sweep paper_table [--out-dir outputs | --tracking-uri URI]

- quality_vs_suppression: FID vs CSD to the distilled model, one point per cell, colour by
  method, the Pareto front (lower is better on both) drawn through the non-dominated cells;
- training_curves: lower- and upper-level losses per method (mean over its cells per step);
- samples_<concept>: rows = methods, columns = the concept's first prompts with their fixed
  seeds (the same images in every cell, so rows compare directly): the teaser figure; below a
  probed cell's row, one per attack (soft and discrete prefix: the same prompts and seeds);
- recovery: FID vs fine-tuning steps per pruning ratio and loss, for cells run with
  eval.recovery_steps (the budget figure);
- attack_vs_quality: ASR under the soft prefix attack (and Pre-ASR) vs FID per erasing cell,
  for cells probed with eval.robustness (harness/robustness).
Each as PNG and PDF under <out_dir>/analysis/<sweep>/, logged to the sweep's parent run."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from analysis.records import Study, client_for  # noqa: E402
from harness.record import Record  # noqa: E402
from analysis.tables import analysis_dir, common_args, load_study, log_to_parent  # noqa: E402
from harness.summary import cell_value, order  # noqa: E402


def _colours(study: Study, shown=None):
    """{label: colour} for the labels a figure shows (default: all), assigned over every cell of
    the study in the methods' order: a method keeps its colour in every figure."""
    ranked = {r.label: order(r) for r in study.records}
    cmap = plt.get_cmap("tab10")
    colours = {label: cmap(i % 10) for i, label in enumerate(sorted(ranked, key=lambda x: (ranked[x], x)))}
    return colours if shown is None else {label: c for label, c in colours.items() if label in shown}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (both minimised), by the first."""
    front, best_y = [], float("inf")
    for x, y in sorted(points):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def _against_fid(fig, ax, ylabel: str, title: str):
    """The axes of a figure with FID on x: labels, title, legend, layout."""
    ax.set_xlabel("FID ↓ (neutral prompts)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def quality_vs_suppression(study: Study):
    cells = [r for r in study.completed if r.prunes]  # the erasing cells and the un-erased student
    by_id = {r.cell: r for r in study.records}
    points = []
    for r in cells:
        fid, csd = r.metrics.get("fid"), cell_value(r, "csd_erased", by_id)
        if fid is not None and csd is not None:
            points.append((r, fid, csd))
    if not points:
        return None
    colours = _colours(study, {r.label for r, _, _ in points})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, colour in colours.items():
        mine = [(f, c) for r, f, c in points if r.label == label]
        ax.scatter([f for f, _ in mine], [c for _, c in mine], color=colour, label=label, s=28, alpha=0.85)
    front = pareto_front([(f, c) for _, f, c in points])
    ax.plot([f for f, _ in front], [c for _, c in front], "k--", lw=1, label="Pareto front")
    ax.scatter([f for f, _ in front], [c for _, c in front], facecolors="none", edgecolors="k", s=80, lw=1)
    return _against_fid(fig, ax, "CSD to the distilled model ↓ (erased concepts)", f"Quality vs suppression: {study.name}")


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


LOWER, UPPER = ("/lower/loss", "/inner/loss"), ("/upper/loss", "/outer/loss", "erase/erase/loss")


def training_curves(study: Study, client):
    curves: dict[tuple[str, str], list[dict[int, float]]] = {}
    for r in study.completed:
        if not r.run_id:
            continue
        for key in r.metrics:
            level = "lower" if key.endswith(LOWER) else "upper" if key.endswith(UPPER) else None
            if level:
                curves.setdefault((level, r.label), []).append(_history(client, r.run_id, key))
    if not curves:
        return None
    colours = _colours(study)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (level, label), runs in sorted(curves.items()):
        ax = axes[0 if level == "lower" else 1]
        steps = sorted(set().union(*runs))
        mean = [sum(h[s] for h in runs if s in h) / sum(s in h for h in runs) for s in steps]
        ax.plot(steps, mean, color=colours[label], label=f"{label} ({len(runs)})", lw=1.4)
    for ax, title in zip(axes, ("lower level: fine-tuning loss", "upper level: suppression loss (eraser stage for two-stage)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss (mean over cells)")
    fig.tight_layout()
    return fig


def _samples(client, record: Record, artifact: str, dest: Path) -> list[tuple[str, Image.Image]]:
    """(prompt, image) of a cell's logged sample set `artifact` (images/concept_<c>, or
    images/robustness/<c>/<kind> for the attacked prompts); [] where the run has none."""
    try:
        local = Path(client.download_artifacts(record.run_id, artifact, str(dest / record.cell / artifact.replace("/", "_"))))
    except Exception:  # a run from before samples were logged, or not probed
        return []
    lines = [json.loads(x) for x in (local / "prompts.jsonl").read_text().splitlines() if x.strip()]
    return [(x["prompt"], Image.open(local / x["file"]).convert("RGB")) for x in lines]


ATTACKS = {"soft": "soft prefix attack", "discrete": "discrete attack"}


def sample_grids(study: Study, client, columns: int = 6) -> list[tuple[str, object]]:
    """One figure per erased concept: a representative cell per method (lowest seed, lowest
    ratio, a cell erasing that concept alone before one erasing it in a set, a probed cell
    before one not probed, then lowest K), its first prompts; below a probed cell's row, a row per attack
    (eval.robustness) with the same prompts and seeds under the found prefix (the discrete
    one's typed words under each image)."""
    out = []
    concepts = sorted({c for r in study.completed if r.erases for c in r.concepts})
    for concept in concepts:
        picks: dict[str, Record] = {}
        def rank(r):  # the cell a method's row shows
            probed = f"robust/asr_soft/{concept}" in r.metrics
            return r.seed, r.ratio or 0, len(r.concepts) if r.erases else 0, not probed, r.K or 0

        for r in sorted(study.completed, key=rank):
            if r.run_id and (not r.erases or concept in r.concepts):
                picks.setdefault(r.label, r)
        labels = sorted(picks, key=lambda x: (order(picks[x]), x))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for label in labels:
                rows.append((label, _samples(client, picks[label], f"images/concept_{concept}", Path(tmp))[:columns], None))
                if picks[label].erases and f"robust/asr_soft/{concept}" in picks[label].metrics:
                    for kind, name in ATTACKS.items():
                        attacked = _samples(client, picks[label], f"images/robustness/{concept}/{kind}", Path(tmp))[:columns]
                        rows.append((f"{label}: {name}", attacked, kind))
        rows = [(label, images, kind) for label, images, kind in rows if images]
        if not rows:
            continue
        n = max(len(images) for _, images, _ in rows)
        fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.6, 1.45 * len(rows) + 0.6), squeeze=False)
        for i, (label, images, kind) in enumerate(rows):
            for j in range(n):
                ax = axes[i][j]
                ax.set_xticks([]), ax.set_yticks([])
                if j < len(images):
                    ax.imshow(images[j][1], interpolation="nearest")
                    typed, plain = images[j][0], rows[0][1][j][0] if j < len(rows[0][1]) else ""
                    if kind == "discrete" and typed.endswith(plain):  # the words the attack typed before the prompt
                        ax.set_xlabel(typed[: len(typed) - len(plain)].strip(), fontsize=5)
                if i == 0 and j < len(images):
                    ax.set_title(images[j][0].replace(" in the style of ", "\n"), fontsize=6)
                if j == 0:
                    ax.set_ylabel(label.replace(" (", "\n(").replace(": ", ":\n"), fontsize=7, rotation=0, ha="right", va="center")
        fig.suptitle(f"Concept '{concept}': same prompts and seeds in every row", fontsize=9)
        fig.tight_layout()
        out.append((f"samples_{concept}", fig))
    return out


def recovery_curves(study: Study, client):
    cells = [r for r in study.completed if r.run_id and ("recovery/fid" in r.metrics or "recovery/heldout_mse" in r.metrics)]
    if not cells:
        return None
    metric = "fid" if any("recovery/fid" in r.metrics for r in cells) else "heldout_mse"
    series: dict[tuple, list[dict[int, float]]] = {}
    for r in cells:
        points = _history(client, r.run_id, f"recovery/{metric}")
        last = r.kind.trained_steps(r.config())
        if metric in r.metrics:
            points[last] = r.metrics[metric]  # the final model completes the curve
        series.setdefault((r.ratio, r.label if r.erases else r.loss), []).append(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap, ratios = plt.get_cmap("viridis"), sorted({k[0] for k in series})
    styles = ["-", "--", ":", "-."]
    losses = sorted({k[1] for k in series})
    for (ratio, loss), runs in sorted(series.items()):
        steps = sorted(set().union(*runs))
        mean = [sum(h[s] for h in runs if s in h) / sum(s in h for h in runs) for s in steps]
        ax.plot(steps, mean, styles[losses.index(loss) % 4], marker="o", ms=3,
                color=cmap(ratios.index(ratio) / max(1, len(ratios) - 1) * 0.85), label=f"ratio {ratio}, {loss}")
    ax.set_xlabel("fine-tuning steps")
    ax.set_ylabel(f"{'FID' if metric == 'fid' else 'held-out MSE'} ↓")
    ax.set_title(f"Recovery: {study.name}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def attack_vs_quality(study: Study):
    """ASR under the soft prefix attack against FID, one point per probed erasing cell, colour
    by method; a thin line from each cell's Pre-ASR (open marker) to its ASR shows how much of
    the erased concept the attack brings back. None where no cell was probed."""
    by_id = {r.cell: r for r in study.records}
    points = []
    for r in study.completed:
        fid = r.metrics.get("fid")
        pre, asr = cell_value(r, "robust/pre_asr_erased", by_id), cell_value(r, "robust/asr_soft_erased", by_id)
        if None not in (fid, pre, asr):
            points.append((r, fid, pre, asr))
    if not points:
        return None
    colours = _colours(study, {r.label for r, *_ in points})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, colour in colours.items():
        mine = [(f, p, a) for r, f, p, a in points if r.label == label]
        for f, p, a in mine:
            ax.plot([f, f], [p, a], color=colour, lw=0.8, alpha=0.6)
        ax.scatter([f for f, _, _ in mine], [p for _, p, _ in mine], facecolors="none", edgecolors=[colour], s=24)
        ax.scatter([f for f, _, _ in mine], [a for _, _, a in mine], color=colour, label=label, s=28)
    return _against_fid(fig, ax, "% of erased-concept prompts showing it ↓\n(open: no attack; filled: soft prefix attack)",
                        f"Erased or only hidden: {study.name}")


def save(fig, dest: Path, name: str) -> list[Path]:
    """A figure as PNG and PDF under `dest`, closed; the paths written."""
    paths = []
    for ext in ("png", "pdf"):
        fig.savefig(dest / f"{name}.{ext}", dpi=150)
        paths.append(dest / f"{name}.{ext}")
    plt.close(fig)
    return paths


def make_all(study: Study, dest: Path) -> list[Path]:
    client = client_for(study.tracking_uri)
    figures = [("quality_vs_suppression", quality_vs_suppression(study)), ("attack_vs_quality", attack_vs_quality(study)),
               ("training_curves", training_curves(study, client)),
               *sample_grids(study, client), ("recovery", recovery_curves(study, client))]
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures:
        if fig is not None:
            paths += save(fig, dest, name)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n\n")[0])
    common_args(parser)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if (study := load_study(args)) is None:
        return 2
    dest = Path(args.dest) if args.dest else analysis_dir(args.out_dir, study)
    paths = make_all(study, dest)
    if not args.no_log:
        log_to_parent(study, paths, "figures")
    for p in paths:
        print(p)
    print(f"{study.name}: {len(paths) // 2} figures in {time.perf_counter() - t0:.1f} s: {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
