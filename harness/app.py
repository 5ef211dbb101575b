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
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError, MissingInputError, fail

REPO = Path(__file__).resolve().parent.parent
CONF = Path(__file__).resolve().parent / "conf"
SWEEPS = REPO / "sweeps"
SLURM_PRESETS = REPO / "slurm"  # launcher presets beside the cluster scripts (launcher=slurm)
log = logging.getLogger("harness")
# Hydra flags that show information instead of running: nothing to check.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}


def register_sweeps() -> None:
    """Top-level config folders as config groups: sweeps/ as `sweep`, slurm/ presets as `launcher`."""
    store = ConfigStore.instance()
    for group, folder in (("sweep", SWEEPS), ("launcher", SLURM_PRESETS)):
        for path in sorted(folder.glob("*.yaml")):
            store.store(group=group, name=path.stem, node=OmegaConf.load(path), package="_global_", provider="harness")


@dataclass
class HarnessSweeperConf:
    _target_: str = "hydra_plugins.harness_sweeper.HarnessSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None
    grids: list[Any] = field(default_factory=list)


def register_plugins() -> None:
    """The harness's sweeper and its SLURM launcher (harness/launch/slurm.py)."""
    from hydra.core.plugins import Plugins

    from harness import sweeper
    from harness.launch import slurm

    slurm.register()
    if "hydra_plugins.harness_sweeper" in sys.modules:
        return

    module = types.ModuleType("hydra_plugins.harness_sweeper")
    # Hydra accepts plugins only from the hydra_plugins namespace: alias the class there.
    module.HarnessSweeper = type("HarnessSweeper", (sweeper.HarnessSweeper,), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    Plugins.instance().register(module.HarnessSweeper)
    ConfigStore.instance().store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf, provider="harness")


def group_options() -> dict[str, list[str]]:
    options = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONF.iterdir() if p.is_dir()}
    options["sweep"] = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
    options["launcher"] = sorted(options.get("launcher", []) + [p.stem for p in SLURM_PRESETS.glob("*.yaml")])
    return options


def precheck(argv: list[str]) -> DictConfig | None:
    """Fail in one line, before Hydra starts, on an unknown config-group choice or a config
    that does not compose (Hydra's own messages span many lines). Returns the composed
    config (None for Hydra's information flags)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.errors import HydraException
    from hydra.types import RunMode

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
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    try:
        return loader.load_configuration("config", overrides=overrides, run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
    except HydraException as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        fail(" ".join(lines[:2]))


def setup_logging() -> None:
    logger = logging.getLogger("harness")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def task(cfg: DictConfig):
    """One cell. In a sweep every cell was validated before any started."""
    from hydra.core.hydra_config import HydraConfig

    from harness.runner import run_cell
    from harness.validate import validate

    from harness import distributed

    setup_logging()
    distributed.setup()  # several processes under torchrun: one data-parallel cell
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    if not multirun:
        try:
            validate(cfg)
        except (ConfigError, MissingInputError) as exc:
            fail(str(exc))
    results = run_cell(cfg)
    if not multirun and results is not None:  # None: not rank 0 of a data-parallel cell
        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in results["metrics"].items()}
        print(f"cell {results['cell_id']} ({results['method']}): {summary}")
    return results


def check(argv: list[str]) -> None:
    """Everything that can be checked before a job starts: group choices, composition, and
    every cell's values (all cells of a sweep). Exits 2 with one line on the first problem."""
    register_sweeps()
    register_plugins()
    config = precheck(argv)
    overrides = [a for a in argv if not a.startswith("-")]
    if INFO_FLAGS & set(argv):
        return
    if config is not None and config.runtime.get("reproducible") is True:
        from harness import numerics

        numerics.reexec_pinned(argv)  # CPU kernels are chosen at a library's first use: pin them from the start
    if "-m" in argv or "--multirun" in argv:
        plan_sweep(overrides)  # validates every cell; exits 2 on the first bad one
        return
    from harness.validate import validate

    try:
        validate(compose_config(overrides))
    except (ConfigError, MissingInputError) as exc:
        fail(str(exc))


def main() -> None:
    check(sys.argv[1:])
    task()


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m harness <overrides>` would run (for tests, notebooks, tools)."""
    from hydra import compose, initialize_config_dir

    register_sweeps()
    register_plugins()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def plan_sweep(arguments: list[str]):
    """The cells `python -m harness -m <arguments>` would run, composed and validated, without
    running anything: [(Cell, overrides)], dependencies first."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import HydraContext, RunMode

    register_sweeps()
    register_plugins()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    config = loader.load_configuration("config", overrides=list(arguments), run_mode=RunMode.MULTIRUN)
    from harness.sweeper import HarnessSweeper

    options = {k: v for k, v in OmegaConf.to_container(config.hydra.sweeper).items() if k != "_target_"}
    sweeper = HarnessSweeper(**options)
    sweeper.config, sweeper.hydra_context = config, HydraContext(config_loader=loader, callbacks=None)
    return sweeper.plan(list(arguments))
