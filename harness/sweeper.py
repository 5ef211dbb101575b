"""The harness's Hydra sweeper: a sweep is a list of grids, expanded to cells.

    hydra.sweeper.grids: [ {method: distill, pruning.ratio: "0.3,0.5"},
                           {method: bilevel, method.K: "5,10,20", ...} ]

Each grid is a cartesian product (Hydra's sweep syntax); command-line sweep arguments apply to
every grid and win over a grid's value for the same key. Before any job starts, every cell's
config is composed and validated (one-line error, exit 2, nothing written), cells are
deduplicated by identity (a key a method does not use makes no new cell), completed cells are
skipped, and cells that others depend on (distill) go first. Then the launcher runs the
pending cells; at the end the paper-style table is printed and saved."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError, MissingInputError, fail
from harness.files import write_atomic
from harness.method import get_method

log = logging.getLogger("harness")


# The plan `python -m harness -m ...` made before Hydra started (app.check), handed to the
# sweeper Hydra then runs in the same process: every cell is composed and validated once.
_PLANNED: dict[tuple[str, ...], list] = {}


def hand_over(arguments: list[str], cells: list) -> None:
    _PLANNED[tuple(arguments)] = cells


class HarnessSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, grids: list | None = None):
        super().__init__()
        self.params = dict(params or {})
        self.grids = [dict(g) for g in (grids or [])]
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    # -- expansion -------------------------------------------------------------------------
    def expand(self, arguments: list[str]) -> list[list[str]]:
        """Override lists, one per grid point, in grid order."""
        from harness.internals import split_overrides

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        cli = parser.parse_overrides(list(arguments))
        cli_keys = {o.get_key_element() for o in cli}
        jobs = []
        for grid in self.grids or [{}]:
            base = [f"{k}={v}" for k, v in {**self.params, **grid}.items() if k not in cli_keys]
            overrides = parser.parse_overrides(base) + cli
            jobs.extend(split_overrides(overrides))
        return jobs

    def compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def plan(self, arguments: list[str], inputs: bool = True):
        """Compose and validate every cell; return [(cell, overrides)] without duplicates.
        `inputs=False`: check values, not the real-scale files (`--plan`)."""
        from harness.cell import Cell
        from harness.validate import validate

        cells, seen = [], set()
        for overrides in self.expand(arguments):
            try:
                cfg = self.compose(overrides)
                validate(cfg, inputs)
            except (ConfigError, MissingInputError) as exc:
                fail(str(exc))
            except HydraException as exc:
                fail(f"{' '.join(overrides)}: {str(exc).strip().splitlines()[0]}")
            cell = Cell(cfg)
            if cell.id not in seen:
                seen.add(cell.id)
                cells.append((cell, list(overrides)))
        # Cells other cells start from (distill: stage 1 of two-stage) run first.
        cells.sort(key=lambda c: get_method(c[0].cfg.method.name).erases)  # references first
        return cells

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        from harness.tracker_process import open_tracker
        from harness.tracking import SWEEP_TAG

        t0 = time.perf_counter()
        handed = _PLANNED.pop(tuple(arguments), None)
        cells = handed if handed is not None else self.plan(arguments)
        if cells and cells[0][0].cfg.get("tune") is not None:  # a tuning sweep: workers ask one study
            from harness.tune.launch import run_tuning

            return run_tuning(cells[0][0].cfg, list(arguments), self.launcher if hasattr(self.launcher, "submit_workers") else None)
        name = self.config.get("sweep_name") or "adhoc"
        sweep_id = f"{name}-{hashlib.sha256(','.join(sorted(c.id for c, _ in cells)).encode()).hexdigest()[:8]}"
        out_dir = Path(self.config.out_dir).resolve()
        folder = out_dir / "sweeps" / sweep_id
        on_slurm = hasattr(self.launcher, "submit_cells")
        busy = set()
        if on_slurm:
            from harness.launch import records

            busy = records.in_flight(records.reconcile(out_dir))
        pending = [(c, o) for c, o in cells if not c.done and c.id not in busy]
        running = [c for c, _ in cells if c.id in busy and not c.done]
        if on_slurm and pending:
            full = int(self.launcher.params.get("gpus_per_node") or 0)
            for gpus, group in sorted(self.launcher.gpu_groups(pending).items()):  # the scheduler's verdict before anything is written
                self.launcher.test_only(len(group), None if gpus == full else gpus)
        print(f"sweep {sweep_id}: {len(cells)} cells, {sum(c.done for c, _ in cells)} already completed, "
              + (f"{len(running)} queued or running, " if on_slurm else "") + f"{len(pending)} to run", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "cells.json", json.dumps([describe(c, o) for c, o in cells], indent=1))
        tracker = open_tracker(self.config)
        parent = tracker.get_or_create_run(SWEEP_TAG, sweep_id, sweep_id, {"harness.sweep": name, "harness.cells": len(cells)})
        if parent:  # the planned cells: analysis marks the ones with no finished run as missing
            tracker.log_artifact(parent, folder / "cells.json")
        configs = {c.id: job_config(c.cfg, parent, out_dir) for c, _ in cells}
        (folder / "configs").mkdir(exist_ok=True)
        for cid, config in configs.items():  # what each cell runs, for `python -m harness.jobs`
            (folder / "configs" / f"{cid}.yaml").write_text(OmegaConf.to_yaml(config))
        # the command line again (Hydra's own overrides, such as the launcher's, included): for retry
        command = [*self.config.hydra.overrides.get("hydra", []), *arguments]
        info = {"sweep_id": sweep_id, "name": name, "parent_run_id": parent, "arguments": command,
                "out_dir": str(out_dir), "cwd": str(Path.cwd()), "launcher": "slurm" if on_slurm else "local",
                "planned_before_launch": handed is not None}
        write_atomic(folder / "sweep.json", json.dumps(info, indent=1))
        failed, returns = [], []
        if on_slurm:
            if pending:
                jobs = [(cell, configs[cell.id]) for cell, _ in pending]
                subs = self.launcher.submit_cells(jobs, sweep_id, out_dir)
                jobs = sorted({j.split("_")[0] for sub in subs for j in sub.job_ids.values()})
                print(f"sweep {sweep_id}: submitted {len(pending)} cells as SLURM job {', '.join(jobs)} "
                      f"({', '.join(sub.job_name for sub in subs)})", flush=True)
            if not self.launcher.wait:
                if pending or running:
                    print(f"sweep {sweep_id}: watch with `python -m harness.jobs status {sweep_id} --out-dir {out_dir}`", flush=True)
                    return []
            else:
                failed = self.launcher.follow([c for c, _ in pending] + running, out_dir)
        elif pending:
            batch = [o + ([f"tracking.parent_run_id={parent}"] if parent else []) for _, o in pending]
            returns = self.launcher.launch(batch, initial_job_idx=0)
            for (cell, _), ret in zip(pending, returns):
                if ret.status.name != "COMPLETED":
                    failed.append((cell, ret._return_value))
        elapsed = time.perf_counter() - t0
        table = close_sweep(folder, [c for c, _ in cells], tracker, {"wall_seconds": elapsed})
        print(table, flush=True)
        print(f"sweep {sweep_id}: {len(cells) - len(failed)}/{len(cells)} cells completed in {elapsed:.0f} s; table: {folder / 'table.md'}", flush=True)
        for cell, err in failed:
            print(f"cell {cell.id} ({cell.cfg.method.name}) FAILED: {err}; log: {cell.path('train.log')}", file=sys.stderr)
        if failed:
            sys.exit(1)
        return returns


def close_sweep(folder: Path, cells: list, tracker, values: dict | None = None) -> str:
    """Every cell of the sweep has ended: write its table, log it to the MLflow parent run and
    close that run (FAILED if any cell did not complete), and mark the sweep finalized."""
    from harness.table import write_table

    info = json.loads((folder / "sweep.json").read_text())
    table = write_table(cells, folder)
    failed = sum(not c.done for c in cells)
    if parent := info.get("parent_run_id"):
        tracker.log_artifact(parent, folder / "table.md")
        tracker.log_artifact(parent, folder / "table.csv")
        tracker.log_metrics(parent, [{"time": time.time(), "step": 0, "values": {"cells": len(cells), "failed": failed, **(values or {})}}])
        tracker.terminate(parent, "FAILED" if failed else "FINISHED")
    write_atomic(folder / "sweep.json", json.dumps({**info, "finalized": time.time()}, indent=1))
    return table


def describe(cell, overrides: list[str]) -> dict:
    """A cell as `python -m harness.jobs status` lists it."""
    from harness.record import row_params
    from harness.table import method_label
    from harness.tracking import flatten

    cfg = cell.cfg
    method = get_method(cfg.method.name)
    return {
        "cell_id": cell.id, "method": cfg.method.name, "label": method_label(cfg),
        "concepts": ",".join(cfg.concepts.erase) if method.erases else None,
        "ratio": cfg.pruning.ratio if method.prunes else None,
        "K": OmegaConf.select(cfg, method.inner_steps_key) if method.inner_steps_key else None,
        "seed": cfg.seed, "overrides": overrides,
        "params": row_params(flatten(OmegaConf.to_container(cfg, resolve=True))),
    }


def job_config(cfg: DictConfig, parent_run_id: str | None, out_dir: Path) -> dict:
    """The resolved config a cell's job runs (no Hydra needed there): the sweep's parent run
    and an absolute out_dir filled in."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    config = OmegaConf.to_container(plain, resolve=True)
    config["out_dir"] = str(out_dir)
    config["tracking"]["parent_run_id"] = parent_run_id
    return config
