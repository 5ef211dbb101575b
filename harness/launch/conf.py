"""The config nodes of the harness's Hydra plugins (their classes: harness/sweeper.py,
harness/launch/slurm.py), importable without importing the plugins themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class HarnessSweeperConf:
    _target_: str = "hydra_plugins.harness_sweeper.HarnessSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None
    grids: list[Any] = field(default_factory=list)


@dataclass
class HarnessSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.harness_launcher.HarnessSlurmLauncher"
    wait: bool = False  # true: follow the jobs to the end and print the table
    freeze_code: bool = True  # jobs run a snapshot of the code taken at submission
