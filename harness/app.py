"""The Hydra app behind `python -m harness`.

    python -m harness method=bilevel pruning.ratio=0.5      # one cell
    python -m harness -m sweep=paper_table                   # a named sweep from sweeps/

Named sweeps live in the top-level `sweeps/` folder and are registered as the `sweep` config
group. Hydra only instantiates sweepers from the `hydra_plugins` namespace, so the harness's
sweeper is registered there under `hydra_plugins.harness_sweeper`, and its SLURM launcher
under `hydra_plugins.harness_launcher`."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.compose import CONF, compose_config, group_options, load_with_hydra_node, register_configs
from harness.errors import ConfigError, MissingInputError, fail
from harness.logs import setup_logging

log = logging.getLogger("harness")
# Hydra flags that show information instead of running: nothing to check.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}


def register_plugins() -> None:
    """The harness's config groups, its sweeper and its SLURM launcher as Hydra plugins."""
    from harness.internals import register_plugin
    from harness.launch.slurm import HarnessSlurmLauncher
    from harness.sweeper import HarnessSweeper

    register_configs()
    register_plugin("harness_sweeper", HarnessSweeper)
    register_plugin("harness_launcher", HarnessSlurmLauncher)


def precheck(argv: list[str]) -> DictConfig | None:
    """Fail in one line, before Hydra starts, on an unknown config-group choice or a config
    that does not compose (Hydra's own messages span many lines). Returns the composed
    config (None for Hydra's information flags)."""
    from hydra.errors import HydraException

    if INFO_FLAGS & set(argv):
        return None
    options = group_options()
    overrides = [a for a in argv if not a.startswith("-")]
    for arg in overrides:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key in options and value and not any(ch in value for ch in "()[]{}$"):
            for choice in value.split(","):
                if choice not in options[key] and choice != "null":
                    fail(f"{key}={choice} is not accepted: one of {', '.join(options[key])}")
    multirun = "-m" in argv or "--multirun" in argv
    try:
        return load_with_hydra_node(overrides, multirun)[0]
    except HydraException as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        fail(" ".join(lines[:2]))


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def task(cfg: DictConfig):
    """One cell, validated (with every other cell of its sweep) by `check` before Hydra started."""
    from hydra.core.hydra_config import HydraConfig

    from harness.runner import run_cell

    from harness import distributed

    setup_logging()
    distributed.setup()  # several processes under torchrun: one data-parallel cell
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    results = run_cell(cfg, validated=True)
    if not multirun and results is not None:  # None: not rank 0 of a data-parallel cell
        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in results["metrics"].items()}
        print(f"cell {results['cell_id']} ({results['method']}): {summary}")
    return results


def check(argv: list[str]) -> None:
    """Everything that can be checked before a job starts: group choices, composition, and
    every cell's values (all cells of a sweep). Exits 2 with one line on the first problem.
    With --plan: print what the run would cost (harness/plan.py) and exit without running."""
    if "--plan" in argv:
        argv = [a for a in argv if a != "--plan"]
        plan(argv)
        sys.exit(0)
    register_plugins()
    config = precheck(argv)
    overrides = [a for a in argv if not a.startswith("-")]
    if INFO_FLAGS & set(argv):
        return
    if config is not None and config.runtime.get("reproducible") is True:
        from harness import numerics

        numerics.reexec_pinned(argv)  # CPU kernels are chosen at a library's first use: pin them from the start
    if config is not None:
        from harness import tracker_process

        tracker_process.start(config)  # MLflow's start-up beside the imports that validation begins
    if "-m" in argv or "--multirun" in argv:
        from harness.sweeper import hand_over

        hand_over(overrides, plan_sweep(overrides))  # validates every cell (exits 2 on the first bad one), once
        return
    from harness.validate import validate

    try:
        validate(compose_config(overrides))
    except (ConfigError, MissingInputError) as exc:
        fail(str(exc))


def main() -> None:
    check(sys.argv[1:])
    from harness.compose import search_path

    sys.argv.extend(search_path())  # the HARNESS_METHODS folders' configs, for Hydra's own composition
    task()


def plan(argv: list[str]) -> None:
    """`--plan`: the cells of a run or sweep, composed and validated as a run would be, with
    their cost estimates; nothing is trained or written."""
    from harness import plan as cost_plan
    from harness.cell import Cell
    from harness.validate import validate

    register_plugins()
    overrides = [a for a in argv if not a.startswith("-")]
    multirun = "-m" in argv or "--multirun" in argv
    precheck(argv)
    config = load_with_hydra_node(overrides, multirun)[0]
    if multirun:
        cells = plan_sweep(overrides, inputs=False)  # a plan may come before the real-scale files: it lists them
    else:
        cfg = compose_config(overrides)
        try:
            validate(cfg, inputs=False)
        except (ConfigError, MissingInputError) as exc:
            fail(str(exc))
        cells = [(Cell(cfg), overrides)]
    try:
        cost_plan.run(cells, config)
    except MissingInputError as exc:
        fail(str(exc))


def plan_sweep(arguments: list[str], inputs: bool = True):
    """The cells `python -m harness -m <arguments>` would run, composed and validated, without
    running anything: [(Cell, overrides)], dependencies first. `inputs=False`: values only."""
    from hydra.types import HydraContext

    from harness.sweeper import HarnessSweeper

    register_plugins()
    config, loader = load_with_hydra_node(arguments)

    options = {k: v for k, v in OmegaConf.to_container(config.hydra.sweeper).items() if k != "_target_"}
    sweeper = HarnessSweeper(**options)
    sweeper.config, sweeper.hydra_context = config, HydraContext(config_loader=loader, callbacks=None)
    return sweeper.plan(list(arguments), inputs)
