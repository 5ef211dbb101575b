"""The paper-style table of a sweep, from the cells' results on disk.

One row per method × setting (concept set, pruning ratio, K). A distill cell does not depend
on the concept set, so it appears once per concept set of the sweep, with that set's
concept columns. Cells that differ only by seed make one row of mean ± standard deviation
(table.csv keeps one row per cell). Missing or failed cells are shown as such, never dropped."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

COLUMNS = [
    ("method", None),
    ("concepts", None),
    ("ratio", None),
    ("K", None),
    ("seeds", "seeds"),
    ("params (M)", None),
    ("MACs %", None),
    ("FID ↓", "fid"),
    ("CLIP ↑", "clip_score"),
    ("CMMD ↓", "cmmd"),
    ("CLIP to concept ↓", "clip_concept_erased"),
    ("CP ↑", "cp_erased"),
    ("CSD ↓", "csd_erased"),
    ("presence erased ↓", "presence_erased"),
    ("presence retained ↑", "presence_retained"),
    ("held-out MSE ↓", "heldout_mse"),
    ("align erased ↓", "alignment_erased"),
    ("align retained ↑", "alignment_retained"),
    ("cell s", None),
    ("cell", None),
]
# Per-concept metrics, averaged over the row's erased (and retained) concepts.
PER_CONCEPT = ("alignment", "clip_concept", "cp", "csd", "presence")


def method_label(cfg) -> str:
    name = cfg.method.name
    if name == "two_stage":
        return f"two-stage + {cfg.eraser.name}"
    if name == "bilevel":
        return f"bilevel ({cfg.method.solver}, {cfg.eraser.name})"
    loss = cfg.finetune.loss
    if not loss.output_kd and not loss.feature_kd:
        return "diffusion loss only"
    return "distill only"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rows_for(cells) -> list[dict]:
    concept_sets = []
    for cell in cells:
        if cell.cfg.method.name != "distill":
            key = (tuple(cell.cfg.concepts.erase), tuple(cell.cfg.concepts.retain))
            if key not in concept_sets:
                concept_sets.append(key)
    rows = []
    for cell in cells:
        cfg = cell.cfg
        sets = [(tuple(cfg.concepts.erase), tuple(cfg.concepts.retain))]
        if cfg.method.name == "distill" and concept_sets:
            sets = concept_sets
        results = cell.results()
        for erase, retain in sets:
            row = {
                "method": method_label(cfg),
                "concepts": "+".join(erase),
                "ratio": cfg.pruning.ratio,
                "K": cfg.method.get("K", "") if cfg.method.name == "bilevel" else "",
                "seed": cfg.seed,
                "cell": cell.id,
                "state": cell.state(),
            }
            if results:
                m = results["metrics"]
                row["params (M)"] = results["pruning"]["params_after"] / 1e6
                row["MACs %"] = 100 * results["pruning"]["macs_after"] / results["pruning"]["macs_before"]
                for key in ("heldout_mse", "fid", "clip_score", "cmmd"):
                    row[key] = m.get(key)
                for key in PER_CONCEPT:
                    row[f"{key}_erased"] = _mean([m.get(f"{key}/{c}") for c in erase])
                    row[f"{key}_retained"] = _mean([m.get(f"{key}/{c}") for c in retain])
                row["cell s"] = results["timings"]["total_seconds"]  # training + evaluation
            rows.append(row)
    rows.sort(key=lambda r: (r["concepts"], r["ratio"], r["method"], r["K"] if r["K"] != "" else -1))
    return rows


SETTING = ("method", "concepts", "ratio", "K")
VALUES = ["params (M)", "MACs %", "fid", "clip_score", "cmmd", "heldout_mse",
          *(f"{k}_{side}" for k in PER_CONCEPT for side in ("erased", "retained")), "cell s"]


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per setting: cells of several seeds become mean ± sd over the completed ones."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in SETTING), []).append(r)
    out = []
    for members in groups.values():
        if len({m["seed"] for m in members}) == 1:
            out.extend(members)
            continue
        done = [m for m in members if m["state"] == "completed"]
        row = {k: members[0][k] for k in SETTING}
        row["seeds"] = len(members)
        row["cell"] = " ".join(m["cell"] for m in members)
        row["state"] = "completed" if len(done) == len(members) else f"{len(done)}/{len(members)} seeds completed"
        for key in VALUES:
            values = [m[key] for m in done if m.get(key) is not None]
            if values:
                row[key] = (statistics.fmean(values), statistics.stdev(values)) if len(values) > 1 else values[0]
        out.append(row)
    if any("seeds" in r for r in out):
        for r in out:
            r.setdefault("seeds", 1)
    return out


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return f"{_fmt(value[0])} ± {_fmt(value[1])}"
    if value is None or value == "":
        return "" if value == "" else "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    rows = over_seeds(rows)
    # A metric column shows when some row has the metric (image metrics need eval.backbone).
    columns = [(c, k) for c, k in COLUMNS if k is None or any(r.get(k) is not None for r in rows)]
    header = [c for c, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r["state"] != "completed" and "seeds" in r:  # some seeds missing: their means, flagged
            cells = [_fmt(r.get(key or c)) for c, key in columns]
            cells[columns.index(("params (M)", None))] = f"*{r['state']}*"
        elif r["state"] != "completed":
            cells = [_fmt(r.get(c)) if c in ("method", "concepts", "ratio", "K", "cell") else "" for c, _ in columns]
            cells[columns.index(("params (M)", None))] = f"*{r['state']}*"
        else:
            cells = [_fmt(r.get(key or c)) for c, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(cells, folder: Path) -> str:
    rows = rows_for(cells)
    text = markdown(rows)
    (folder / "table.md").write_text(text)
    buf = io.StringIO()
    fields = [*SETTING, "seed", "state", *VALUES, "cell"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (folder / "table.csv").write_text(buf.getvalue())
    return text
