"""The harness's configuration: its folders (the config groups under harness/conf, the named
sweeps in sweeps/, the SLURM presets in slurm/) and composing a config as
`python -m harness <overrides>` would, for workers, tools, notebooks and tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parent.parent
CONF = Path(__file__).resolve().parent / "conf"
SWEEPS = REPO / "sweeps"
SLURM_PRESETS = REPO / "slurm"  # launcher presets beside the cluster scripts (launcher=slurm)


def register_configs() -> None:
    """Top-level config folders as config groups (sweeps/ as `sweep`, slurm/ presets as
    `launcher`) and the config nodes of the harness's sweeper and launcher."""
    from hydra.core.config_store import ConfigStore

    from harness.launch.conf import HarnessSlurmConf, HarnessSweeperConf

    store = ConfigStore.instance()
    for group, folder in (("sweep", SWEEPS), ("launcher", SLURM_PRESETS)):
        for path in sorted(folder.glob("*.yaml")):
            store.store(group=group, name=path.stem, node=OmegaConf.load(path), package="_global_", provider="harness")
    store.store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf, provider="harness")
    store.store(group="hydra/launcher", name="harness_slurm", node=HarnessSlurmConf, provider="harness")


def group_options() -> dict[str, list[str]]:
    options = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONF.iterdir() if p.is_dir()}
    options["sweep"] = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
    options["launcher"] = sorted(options.get("launcher", []) + [p.stem for p in SLURM_PRESETS.glob("*.yaml")])
    return options


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m harness <overrides>` would run (for tests, notebooks, tools)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def load_multirun(arguments: list[str], multirun: bool = True):
    """(config with its `hydra` node, the loader) for a command line, as Hydra's app composes it."""
    from hydra.types import RunMode

    from harness.internals import config_loader

    register_configs()
    loader = config_loader(CONF)
    return loader.load_configuration("config", overrides=list(arguments), run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN), loader
