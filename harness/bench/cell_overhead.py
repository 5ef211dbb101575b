"""The per-cell section: what a cell costs besides training and evaluation, and its share of a
smoke cell. A cell runs as a user runs it (`python -m harness ...` in a fresh process), with
MLflow tracking on and off (interleaved); its results.json splits the inside of the run:

    wall (outside)  = process start + imports            (python -c 'import harness.runner')
                    + config, validation, environment, MLflow run, results
                    + context (model build, world data, pruning)
                    + training (the stages' loops)  + evaluation
    fixed overhead  = wall − training − evaluation
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def smoke_cell() -> list[str]:
    """The smoke sweep's baseline cell (distillation), run alone."""
    from harness.method import baseline_method

    return ["sweep=smoke", f"method={baseline_method().name}"]


def run_python(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def run_cell(overrides: list[str], out: Path, tracking: bool, seed: int) -> dict:
    """Run one cell in a fresh process into `out`; the inside of its run from results.json."""
    before = set((out / "cells").glob("*/results.json")) if (out / "cells").is_dir() else set()
    wall = run_python(["-m", "harness", *overrides, f"out_dir={out}", f"seed={seed}", f"tracking.enabled={str(tracking).lower()}",
                    "runtime.progress=false"], REPO)
    (path,) = set((out / "cells").glob("*/results.json")) - before
    timings = json.loads(path.read_text())["timings"]
    training = sum(v["seconds"] for v in timings.values() if isinstance(v, dict))
    inside = timings["total_seconds"]
    return {"wall": wall, "training": training, "evaluation": timings["eval_seconds"],
            "context": inside - training - timings["eval_seconds"], "outside_run": wall - inside}


def create_store(out: Path) -> dict[str, float]:
    """Create `out`'s MLflow store as a sweep's first cell does (a copy of MLflow's empty store,
    harness/mlflow_store.py), and, beside it, as MLflow alone would (its migrations); the
    seconds of each (MLflow imported beforehand: that cost is per process and counted with
    the cells; the template is made before the clock starts, once per machine)."""
    from mlflow.tracking import MlflowClient

    from harness import mlflow_store

    mlflow_store.template()
    seconds = {}
    for how, db in (("from template", out.resolve() / "mlflow.db"), ("by MLflow", out.resolve().parent / "by_mlflow.db")):
        t0 = time.perf_counter()
        if how == "from template":
            mlflow_store.create(db)
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        seconds[how] = time.perf_counter() - t0
    return seconds


def in_a_sweep(overrides: list[str], out: Path, cells: int = 4) -> dict:
    """What a further cell of a local sweep adds besides its training and evaluation: the sweep
    runs its cells in one process, so imports, the MLflow client and the plan are paid once.
    The same cell is run as a sweep of 1 and of `cells` seeds (with whatever reference cells the
    sweep adds): ((wall − Σ training and evaluation) of the larger − that of the smaller) / the
    difference in cells."""
    runs = {}
    for n in (1, cells):
        folder = out / f"sweep_of_{n}"
        seeds = ",".join(str(1_000 + i) for i in range(n))
        # the named sweep's own grid is dropped: the cell alone, over seeds
        wall = run_python(["-m", "harness", "-m", *overrides, "hydra.sweeper.grids=[]", f"seed={seeds}", f"out_dir={folder}",
                           "runtime.progress=false"], REPO)
        done = [json.loads(p.read_text())["timings"] for p in folder.glob("cells/*/results.json")]
        work = sum(sum(v["seconds"] for v in t.values() if isinstance(v, dict)) + t["eval_seconds"] for t in done)
        runs[n] = {"wall_s": wall, "cells": len(done), "training_and_evaluation_s": work}
    small, large = runs[1], runs[cells]
    per_cell = ((large["wall_s"] - large["training_and_evaluation_s"]) - (small["wall_s"] - small["training_and_evaluation_s"])) \
        / (large["cells"] - small["cells"])
    return {"per_further_cell_s": per_cell, "sweeps": runs}


def run(overrides: list[str] | None = None, repeats: int = 1, say=print, sweep_cells: int = 4) -> dict:
    """Cells as in a sweep or a SLURM job: their out_dir's MLflow store already exists (its
    creation is measured apart). Each timed cell has its own seed, so it trains (a completed
    cell would be skipped)."""
    import mlflow  # noqa: F401  (imported before create_store's clock starts)

    overrides = smoke_cell() if overrides is None else overrides

    imports = []
    cells: dict[str, list[dict]] = {"tracking on": [], "tracking off": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / name.replace(" ", "_") for name in cells}
        outs["tracking on"].mkdir()
        store = create_store(outs["tracking on"])
        for r in range(repeats):
            imports.append(run_python(["-c", "import harness.app, harness.runner, methods"], REPO))
            for name in cells:
                cells[name].append(run_cell(overrides, outs[name], tracking=name == "tracking on", seed=r))
                say(f"  repeat {r + 1}/{repeats} cell, {name}: {cells[name][-1]['wall']:.1f} s")
        say(f"  the same cell in a sweep of 1 and of {sweep_cells} (one process)")
        sweep = in_a_sweep(overrides, Path(tmp), sweep_cells)
    med = {name: {k: statistics.median(c[k] for c in runs) for k in runs[0]} for name, runs in cells.items()}
    start = statistics.median(imports)
    on = med["tracking on"]
    fixed = on["wall"] - on["training"] - on["evaluation"]
    tracking = statistics.median(a["outside_run"] - b["outside_run"] for a, b in zip(cells["tracking on"], cells["tracking off"]))
    return {
        "cell": overrides,
        "repeats": repeats,
        "wall_s": on["wall"],
        "training_s": on["training"],
        "evaluation_s": on["evaluation"],
        "fixed_s": fixed,
        "fixed_share": fixed / on["wall"],
        "parts_s": {
            "process start + imports": start,
            "context (model, data, pruning)": on["context"],
            "MLflow tracking (on − off)": tracking,
            "config, validation, environment, results": on["outside_run"] - start - tracking,
        },
        "in_a_sweep": sweep,
        "store_creation_s": store,
        "runs": cells,
        "imports_s": imports,
    }
