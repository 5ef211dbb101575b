"""Every use of a private Hydra or submitit API, in one place.

The harness needs four things their public APIs do not offer. Each is one function here, with
a test of its own (tests/test_internals.py), so an upgrade that moves one breaks this file,
loudly, and nothing else:

- composing a multirun config with its `hydra` node before Hydra's app starts (to check every
  cell of a sweep in one line before anything runs): Hydra's ConfigLoaderImpl;
- expanding a sweep's override lists (`a=1,2 b=x,y`) as Hydra's BasicSweeper does;
- registering the harness's sweeper and launcher: Hydra instantiates plugins only from the
  `hydra_plugins` namespace, so a class is aliased into a module made there;
- the sbatch script submitit would submit (to `sbatch --test-only` it before submitting);
- (Optuna) a live handle on a RUNNING trial a requeued worker started before: Optuna's public
  API gives the trial's number, its constructor wants the storage's trial id;
- (clean-fid) its legacy_pytorch Inception with the weights read weights-only: clean-fid
  fetches them through torch.hub, whose loader unpickles without the weights-only guard."""

from __future__ import annotations

import sys
import types
from pathlib import Path


def config_loader(conf_dir: Path):
    """Hydra's config loader over the harness's config folder."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf_dir)))


def split_overrides(overrides: list) -> list[list[str]]:
    """Parsed overrides with sweeps (`a=1,2`) → one override list per point, in Hydra's order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, None)[0]


def register_plugin(module_name: str, base: type) -> type:
    """`base` as a Hydra plugin class `hydra_plugins.<module_name>.<base name>` (made once)."""
    from hydra.core.plugins import Plugins

    full = f"hydra_plugins.{module_name}"
    if full in sys.modules:
        return getattr(sys.modules[full], base.__name__)
    module = types.ModuleType(full)
    cls = type(base.__name__, (base,), {"__module__": full})
    setattr(module, base.__name__, cls)
    sys.modules[full] = module
    Plugins.instance().register(cls)
    return cls


def running_trial(study, frozen):
    """An optuna.trial.Trial for the RUNNING `frozen` trial (to report and tell it again)."""
    from optuna.trial import Trial

    return Trial(study, frozen._trial_id)


def sbatch_script(executor, command: str, folder: str, array: int) -> str:
    """The sbatch script a submitit AutoExecutor (cluster=slurm) would submit for an array of
    `array` tasks running `command`."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=folder, map_count=array, **executor._executor.parameters)


def legacy_inception(state: dict, device):
    """clean-fid's `legacy_pytorch` feature extractor with the pytorch-fid Inception weights
    `state` (read weights-only by the caller) in place of those torch.hub would unpickle."""
    import cleanfid.inception_pytorch as fid_inception
    from cleanfid.features import build_feature_extractor

    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        return build_feature_extractor("legacy_pytorch", device, use_dataparallel=False)
    finally:
        fid_inception.load_state_dict_from_url = original
