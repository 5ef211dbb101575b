"""Bring MLflow up to date with what is on disk, idempotently.

    python -m harness.backfill --out-dir outputs [--tracking-uri http://host:5000] [--experiment harness]

For every sweep folder, the sweep's parent run is found (by tag) or created; for every cell
folder, its child run is found or created, given the metric lines MLflow lacks, and, for a
completed cell, its final metrics and artifacts. Running it twice adds nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness.cell import Cell
from harness.tracking import SWEEP_TAG, CellRun, Tracker


def backfill(out_dir: Path, uri: str | None = None, experiment: str = "harness") -> dict:
    out_dir = Path(out_dir)
    base = OmegaConf.create({"out_dir": str(out_dir), "tracking": {"uri": uri, "experiment": experiment, "enabled": True}})
    tracker = Tracker(base)
    parents: dict[str, str] = {}
    for sweep_json in sorted(out_dir.glob("sweeps/*/sweep.json")):
        sweep = json.loads(sweep_json.read_text())
        cells = json.loads((sweep_json.parent / "cells.json").read_text())
        parent = tracker.get_or_create_run(SWEEP_TAG, sweep["sweep_id"], sweep["sweep_id"], {"harness.sweep": sweep["name"], "harness.cells": len(cells)})
        if parent:
            for name in ("table.md", "table.csv"):
                tracker.log_artifact(parent, sweep_json.parent / name)
            tracker.terminate(parent)
            for c in cells:
                parents.setdefault(c["cell_id"], parent)
    synced = pending = 0
    for config in sorted(out_dir.glob("cells/*/config.yaml")):
        cfg = OmegaConf.load(config)
        cfg.tracking.uri, cfg.tracking.experiment = uri, experiment
        cell = Cell(cfg)
        cell.dir = config.parent  # the folder as found (its id was computed when it was made)
        run = CellRun(tracker, cell, parents.get(cell.dir.name))
        if run.state.get("synced"):
            synced += 1
            continue
        # the tags a live cell gets from its environment (commit, kernel set, SLURM job): from its record
        env_path = cell.path("environment.json")
        run.start(json.loads(env_path.read_text()) if env_path.exists() else None)
        if cell.done:
            ok = run.finish(cell.results())
        else:
            run.flush(force=True)
            ok = False
        synced += ok
        pending += not ok
    return {"cells_synced": synced, "cells_not_synced": pending, "tracking_down": tracker.down, "uri": tracker.uri}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.backfill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="outputs", help="the run's out_dir (its sweeps/ and cells/); default outputs")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sqlite store <out_dir>/mlflow.db)")
    parser.add_argument("--experiment", default="harness", help="MLflow experiment (default harness)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        print(f"error: --out-dir {out_dir} is not accepted: an existing output folder", file=sys.stderr)
        return 2
    summary = backfill(out_dir, args.tracking_uri, args.experiment)
    print(json.dumps(summary))
    return 1 if summary["tracking_down"] else 0


if __name__ == "__main__":
    sys.exit(main())
