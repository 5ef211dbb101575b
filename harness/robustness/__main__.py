"""python -m harness.robustness: the robustness probes added to finished erasing cells.

    python -m harness.robustness --out-dir outputs/reference                   # every finished erasing cell
    python -m harness.robustness --out-dir outputs f830f7dbd5 c1727a91ac eval.robustness.prompts=32

Each cell's own config (its config.yaml, over this checkout's defaults for keys added since),
with `eval.robustness.enabled=true` and the `eval.robustness.*` overrides given, probed on its
saved student without training (harness/runner.add_robustness). A cell whose config no longer
gives its id (the harness changed what a cell is) is refused, in one line, before any probe
runs. One line per cell: its Pre-ASR, ASR and relearning steps over the erased concepts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import ConfigError, fail


def cell_config(folder: Path, out_dir: Path, overrides: list[str]):
    """The config of the finished cell in `folder`, probes on, ready to run; or one line."""
    import yaml
    from omegaconf import OmegaConf

    from harness.cell import Cell
    from harness.compose import compose_config

    saved = OmegaConf.load(folder / "config.yaml")
    groups = [f"method={saved.method.name}"] + ([f"eraser={saved.eraser.name}"] if "eraser" in saved else [])
    cfg = compose_config(groups)
    OmegaConf.set_struct(cfg, False)
    cfg = OmegaConf.merge(cfg, saved)  # the cell's values; this checkout's defaults for keys it lacks
    cfg.out_dir = str(out_dir)
    OmegaConf.update(cfg, "eval.robustness.enabled", True)
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("eval.robustness.") or not value:
            fail(f"{item!r} is not accepted: eval.robustness.<key>=<value> (the probes' budget; the cell's own keys stay as they ran)")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    from harness.validate import validate

    try:
        validate(cfg, inputs=False)
    except ConfigError as error:
        fail(str(error))
    if (cell := Cell(cfg)).id != folder.name:
        fail(f"cell {folder.name}: its config gives id {cell.id} in this checkout (it was made by another version of the "
             f"harness; probe it with that version's code)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", help="cell ids (default: every finished erasing cell), then eval.robustness.<key>=<value> overrides")
    parser.add_argument("--out-dir", default="outputs", type=Path, help="the run's out_dir (default: outputs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in args.items if "=" in a]
    ids = [a for a in args.items if "=" not in a]
    cells_dir = args.out_dir / "cells"
    if not cells_dir.is_dir():
        fail(f"--out-dir={args.out_dir}: no cells/ folder there (the out_dir of a run)")
    from omegaconf import OmegaConf

    from harness.method import get_method

    folders = [cells_dir / i for i in ids] if ids else sorted(p.parent for p in cells_dir.glob("*/COMPLETED"))
    for folder in folders:
        if not (folder / "COMPLETED").exists():
            fail(f"cell {folder.name}: no finished cell of that id under {cells_dir} (python -m harness.jobs status --out-dir {args.out_dir} lists them)")
    if not ids:  # by default only the cells that erase something
        folders = [f for f in folders if get_method(OmegaConf.load(f / "config.yaml").method.name).erases]
    elif not_erasing := [f.name for f in folders if not get_method(OmegaConf.load(f / "config.yaml").method.name).erases]:
        fail(f"cell {not_erasing[0]}: its method erases nothing (the probes measure erased concepts)")
    configs = [cell_config(f, args.out_dir, overrides) for f in folders]  # every refusal before any probe
    if argv is None and any(cfg.runtime.get("reproducible") for cfg in configs):
        from harness import numerics

        # a cell made in the reproducible mode is probed in it: the CPU kernels are chosen at
        # torch's first use, so the command restarts with the pinned environment
        numerics.reexec_pinned(sys.argv[1:], module="harness.robustness")

    from harness.cell import Cell
    from harness.runner import add_robustness

    for cfg in configs:
        m = add_robustness(cfg, Cell(cfg))["metrics"]
        print(f"{Cell(cfg).id} {cfg.method.name}: Pre-ASR {m['robust/pre_asr/erased']:.1f}, ASR soft {m['robust/asr_soft/erased']:.1f}, "
              f"ASR discrete {m['robust/asr_discrete/erased']:.1f}, relearn steps {m['robust/relearn_steps/erased']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
