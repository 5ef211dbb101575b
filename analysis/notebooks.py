"""Execute the analysis notebooks (analysis/*.ipynb) headless on a sweep.

    python -m analysis.notebooks --sweep smoke [--out-dir outputs | --tracking-uri URI]

Each notebook runs in a fresh kernel with the sweep and store injected after its
`parameters` cell; the executed copy (outputs included) is written to
<out_dir>/analysis/<sweep>/notebooks/. Any error in any cell fails the command (exit 1)
with the notebook, the cell and the error in one line."""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import time
from pathlib import Path

from analysis.tables import analysis_dir, common_args, load_study

NOTEBOOKS = sorted(Path(__file__).resolve().parent.glob("*.ipynb"))
REPO = Path(__file__).resolve().parent.parent


def with_parameters(notebook, values: dict):
    """A copy of `notebook` with a cell setting `values` right after its parameters cell."""
    import nbformat

    nb = copy.deepcopy(notebook)
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), -1)
    source = "# Injected by analysis.notebooks\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def execute(path: Path, values: dict, dest: Path, timeout_s: int = 600) -> float:
    """Run one notebook; returns seconds. Raises RuntimeError naming the failing cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = with_parameters(nbformat.read(path, as_version=4), values)
    t0 = time.perf_counter()
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment: it imports this checkout
    try:
        NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    except CellExecutionError as exc:
        failing = next((i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))), "?")
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the kernel's traceback comes coloured
        last = text.splitlines()[-1] if text else type(exc).__name__
        raise RuntimeError(f"{path.name}: cell {failing}: {last}") from exc
    finally:
        dest.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest / path.name)  # executed copy, errors included: open it to see
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.notebooks", description=__doc__.split("\n\n")[0])
    common_args(parser)
    args = parser.parse_args(argv)
    if not args.sweep:
        print("error: --sweep is required (the notebooks take a sweep name or id)", file=sys.stderr)
        return 2
    if (study := load_study(args)) is None:  # fail here, in one line, on an unknown sweep or store
        return 2
    dest = (Path(args.dest) if args.dest else analysis_dir(args.out_dir, study)) / "notebooks"
    values = {"OUT_DIR": str(Path(args.out_dir).resolve()), "TRACKING_URI": args.tracking_uri, "SWEEP": study.name}
    failed = 0
    for path in NOTEBOOKS:
        try:
            seconds = execute(path, values, dest)
            print(f"{path.name}: ran in {seconds:.1f} s -> {dest / path.name}")
        except RuntimeError as exc:
            print(f"error: {exc} (executed copy: {dest / path.name})", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
