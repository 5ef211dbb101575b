"""The paper-style table of a sweep, from the cells' results on disk.

One row per method × setting (concept set, pruning ratio, K). A distill cell does not depend
on the concept set, so it appears once per concept set of the sweep, with that set's
concept columns. Missing or failed cells are shown as such, never dropped."""

from __future__ import annotations

import csv
import io
from pathlib import Path

COLUMNS = [
    ("method", None),
    ("concepts", None),
    ("ratio", None),
    ("K", None),
    ("params (M)", None),
    ("held-out MSE ↓", "heldout_mse"),
    ("align erased ↓", "alignment_erased"),
    ("align retained ↑", "alignment_retained"),
    ("cell s", None),
    ("cell", None),
]


def method_label(cfg) -> str:
    name = cfg.method.name
    if name == "two_stage":
        return f"two-stage + {cfg.eraser.name}"
    if name == "bilevel":
        return f"bilevel ({cfg.method.solver}, {cfg.eraser.name})"
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
                "cell": cell.id,
                "state": cell.state(),
            }
            if results:
                m = results["metrics"]
                row["params (M)"] = results["pruning"]["params_after"] / 1e6
                row["heldout_mse"] = m.get("heldout_mse")
                row["alignment_erased"] = _mean([m.get(f"alignment/{c}") for c in erase])
                row["alignment_retained"] = _mean([m.get(f"alignment/{c}") for c in retain])
                row["cell s"] = results["timings"]["total_seconds"]  # training + evaluation
            rows.append(row)
    rows.sort(key=lambda r: (r["concepts"], r["ratio"], r["method"], r["K"] if r["K"] != "" else -1))
    return rows


def _fmt(value) -> str:
    if value is None or value == "":
        return "" if value == "" else "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    header = [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r["state"] != "completed":
            cells = [_fmt(r.get(c)) if c in ("method", "concepts", "ratio", "K", "cell") else "" for c, _ in COLUMNS]
            cells[COLUMNS.index(("params (M)", None))] = f"*{r['state']}*"
        else:
            cells = [_fmt(r.get(key or c)) for c, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(cells, folder: Path) -> str:
    rows = rows_for(cells)
    text = markdown(rows)
    (folder / "table.md").write_text(text)
    buf = io.StringIO()
    fields = ["method", "concepts", "ratio", "K", "state", "params (M)", "heldout_mse", "alignment_erased", "alignment_retained", "cell s", "cell"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (folder / "table.csv").write_text(buf.getvalue())
    return text
