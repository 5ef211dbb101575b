"""The table a sweep prints and writes at its end (sweeps/<id>/table.md, table.csv), from its
cells on disk: the same records and rendering as `python -m analysis.tables`, which builds the
paper's tables from MLflow. One row per setting (mean ± sd over seeds) in table.md; one row
per cell in table.csv. Missing or failed cells are shown as such, never dropped."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def method_label(cfg) -> str:
    """How a cell's method reads in tables and `python -m harness.jobs status`."""
    from harness.record import method_label as label
    from harness.tracking import flatten

    return label(flatten(OmegaConf.to_container(cfg, resolve=True)))


def write_table(cells, folder: Path) -> str:
    from harness.record import from_cells
    from harness.render import markdown, to_csv
    from harness.summary import overview

    records = from_cells(cells)
    text = markdown(overview(records))
    (folder / "table.md").write_text(text)
    (folder / "table.csv").write_text(to_csv([overview(records, per_cell=True)]))
    return text
