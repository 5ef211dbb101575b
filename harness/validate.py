"""Check a resolved config before any job starts. Every failure is a ConfigError (or
MissingInputError) whose message is one line naming the key, the value and what is accepted."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import concepts, schema
from harness.errors import ConfigError, MissingInputError
from harness.method import get_method


def validate(cfg: DictConfig) -> None:
    """Every key's type and range (harness/schema.py), then what spans keys or files."""
    method = get_method(cfg.method.name)
    schema.check(cfg)
    if cfg.get("tune") is not None:
        from harness.tune.spec import parse

        parse(cfg)
    _model(cfg)
    _data(cfg)
    concepts.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    _recovery_steps(cfg, method)
    _eval_backbone(cfg)
    method.validate(cfg)
    _split_over_processes(cfg)


def _split_over_processes(cfg: DictConfig) -> None:
    """Under torchrun every batch is split over the data-parallel processes (WORLD_SIZE)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    keys = ["finetune.batch_size", "eraser.batch_size", *get_method(cfg.method.name).batch_keys]
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value % processes:
            raise ConfigError(key, value, f"a multiple of {processes}, the number of data-parallel processes")


def _model(cfg: DictConfig) -> None:
    m = cfg.model
    if m.name == "sd21":
        from harness.models.sd21 import locate

        locate(m)
    else:
        from harness.models.tiny import teacher_weights

        teacher_weights(m)  # fails in one line when the weights file is missing or not what its manifest says


def _data(cfg: DictConfig) -> None:
    d = cfg.data
    if d.name != "world":
        root = Path(str(d.root)).expanduser()
        for sub in ("annotations", "images"):
            if not (root / sub).is_dir():
                raise MissingInputError(f"data.root={root}: missing {sub}/ (MS-COCO 2017 layout: annotations/captions_train2017.json, images/train2017/)")
        if not Path(str(d.concept_source)).expanduser().exists():
            raise MissingInputError(f"data.concept_source={d.concept_source}: no such file or folder (an image folder or a parquet/arrow table)")


def _recovery_steps(cfg: DictConfig, method) -> None:
    steps, last = cfg.eval.get("recovery_steps") or [], method.trained_steps(cfg)
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0 or last is None or step > last:
            accepted = f"steps between 1 and {last} (the iterations of {cfg.method.name}'s last stage)" if last else f"[] ({cfg.method.name} trains nothing)"
            raise ConfigError("eval.recovery_steps", list(steps), accepted)


def _eval_backbone(cfg: DictConfig) -> None:
    ev = cfg.eval
    if ev.backbone == "world":
        if cfg.data.domain != "world":
            raise ConfigError("eval.backbone", ev.backbone, f"real or none with data={cfg.data.name} (the world's backbones judge world images only)")
        from harness.metrics.world import world_weights

        world_weights(ev.weights, "eval.weights")
    if ev.backbone == "real":
        from harness.metrics.real import check

        check(ev.real)
