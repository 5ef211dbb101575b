"""The robustness section: what the probes (harness/robustness) cost beside the training of the
cell they probe, and the ASR-against-iterations curves that say whether the attack's budget
was enough. An erasing cell that trains on from its reference cell (the registry's first such
method: two-stage, with the config's default eraser) trains as a user runs it (`python -m
harness ...`, a fresh process: its reference first), then `python -m harness.robustness` probes
it in another:

    training  = the reference cell's stages + the erasing cell's (what the method cost)
    probe     = the probes' own seconds (robustness.json), and the probing process's wall time
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from harness.bench.cell_overhead import REPO, run_python

EVAL = ["eval.neutral_prompts=16", "eval.concept_prompts=32", "eval.reference_images=1024"]  # enough for the probes' references


def probed_method() -> str:
    """The method whose cell is probed: the first (by name) that erases and continues its reference."""
    from harness.method import get_method, method_names

    return next(n for n in method_names() if get_method(n).erases and get_method(n).continues_reference)


def _training_seconds(results: dict) -> float:
    return sum(v["seconds"] for v in results["timings"].values() if isinstance(v, dict))


def run(overrides: list[str], say=print) -> dict:
    """`overrides`: the bench's config overrides; those of `eval.robustness.*` set the probes'
    budget, the others the cell."""
    probe_args = [o for o in overrides if o.startswith("eval.robustness.")]
    cell_args = [o for o in overrides if not o.startswith("eval.robustness.")]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        method = probed_method()
        say(f"robustness: a {method} cell (and its reference cell), then its probes, in fresh processes")
        cell_args = [f"method={method}", *EVAL, *cell_args]
        train_wall = run_python(["-m", "harness", *cell_args, f"out_dir={out}", "tracking.enabled=false",
                              "runtime.progress=false"], REPO)
        cells = {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/results.json")}
        (cell,) = [c for c, r in cells.items() if r["method"] == method]
        reference = cells[cells[cell]["depends_on"]]
        probe_wall = run_python(["-m", "harness.robustness", "--out-dir", str(out), cell, *probe_args], REPO)
        record = json.loads((out / "cells" / cell / "robustness.json").read_text())
    training = _training_seconds(reference) + _training_seconds(cells[cell])
    curves = {name: {kind: [(p["iteration"], p["asr"]) for p in entry[kind]["curve"]] for kind in ("soft", "discrete")}
              for name, entry in record["concepts"].items()}
    relearn = {name: entry["relearn"]["curve"] for name, entry in record["concepts"].items()}
    return {"cell": cell_args, "budget": record["budget"], "training_s": training, "train_wall_s": train_wall,
            "probe_s": record["seconds"], "probe_wall_s": probe_wall, "probe_vs_training": record["seconds"] / training,
            "curves": curves, "relearn": relearn}
