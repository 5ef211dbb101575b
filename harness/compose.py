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
# Methods kept outside this repository: folders, separated like PATH, each holding method
# modules (<folder>/*.py, discovered like methods/) and their configs (<folder>/conf/method/*.yaml)
METHODS_ENV = "HARNESS_METHODS"


_PARSED: dict[tuple, object] = {}


def read_yaml(path: Path) -> DictConfig:
    """`OmegaConf.load(path)`, its YAML parsed once per process while the file is unchanged
    (same size and mtime): planning a sweep reads the same few config files for every cell.
    Each call returns a config of its own, for the caller to change."""
    import copy

    from harness.files import file_version

    key = file_version(path)
    if key not in _PARSED:
        _PARSED[key] = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return OmegaConf.create(copy.deepcopy(_PARSED[key]))


def method_dirs() -> list[Path]:
    """The folders `HARNESS_METHODS` names (each must exist)."""
    import os

    from harness.errors import fail

    folders = [Path(p).expanduser().resolve() for p in os.environ.get(METHODS_ENV, "").split(os.pathsep) if p]
    for folder in folders:
        if not folder.is_dir():
            fail(f"{METHODS_ENV}={folder}: no such folder (folders of method modules, each with conf/method/<name>.yaml)")
    return folders


def search_path() -> list[str]:
    """The `hydra.searchpath` override that adds those folders' configs ([] without any)."""
    extra = [f"file://{d / 'conf'}" for d in method_dirs()]
    return [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []


def config_file(group: str, name: str) -> Path | None:
    """A config group option's file: harness/conf/<group>/<name>.yaml, or one from HARNESS_METHODS."""
    for root in (CONF, *(d / "conf" for d in method_dirs())):
        path = root / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def register_configs() -> None:
    """Top-level config folders as config groups (sweeps/ as `sweep`, slurm/ presets as
    `launcher`) and the config nodes of the harness's sweeper and launcher."""
    from hydra.core.config_store import ConfigStore

    from harness.launch.conf import HarnessSlurmConf, HarnessSweeperConf

    store = ConfigStore.instance()
    for group, folder in (("sweep", SWEEPS), ("launcher", SLURM_PRESETS)):
        for path in sorted(folder.glob("*.yaml")):
            store.store(group=group, name=path.stem, node=read_yaml(path), package="_global_", provider="harness")
    store.store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf, provider="harness")
    store.store(group="hydra/launcher", name="harness_slurm", node=HarnessSlurmConf, provider="harness")


def group_options() -> dict[str, list[str]]:
    options = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in CONF.iterdir() if p.is_dir()}
    for root in (d / "conf" for d in method_dirs()):
        for group in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
            options[group.name] = sorted(set(options.get(group.name, [])) | {f.stem for f in group.glob("*.yaml")})
    options["sweep"] = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
    options["launcher"] = sorted(options.get("launcher", []) + [p.stem for p in SLURM_PRESETS.glob("*.yaml")])
    return options


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m harness <overrides>` would run (for tests, notebooks, tools)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*search_path(), *(overrides or [])], return_hydra_config=return_hydra_config)


def load_with_hydra_node(arguments: list[str], multirun: bool = True):
    """(the config with its `hydra` node, the loader) for a command line, as Hydra's app composes it
    (before the app starts: to check every cell of a sweep first)."""
    from hydra.types import RunMode

    from harness.internals import config_loader

    register_configs()
    loader = config_loader(CONF)
    return loader.load_configuration("config", overrides=[*search_path(), *arguments],
                                     run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN), loader
