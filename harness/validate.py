"""Check a resolved config before any job starts. Every failure is a ConfigError (or
MissingInputError) whose message is one line naming the key, the value and what is accepted."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import concepts, schema
from harness.errors import ConfigError, MissingInputError
from harness.method import get_method


def validate(cfg: DictConfig, inputs: bool = True) -> None:
    """Every key's type and range (harness/schema.py), then what spans keys or files.
    `inputs=False`: the values only, not the real-scale files they point at (SD 2.1, COCO,
    concept images, metric backbones: `missing_inputs` lists those), as `--plan` checks."""
    method = get_method(cfg.method.name)
    schema.check(cfg)
    if cfg.get("tune") is not None:
        from harness.tune.spec import parse

        parse(cfg)
    if inputs:
        _model(cfg)
        _data(cfg)
    elif cfg.model.name != "sd21":
        _model(cfg)  # the world's weights: part of every cell's identity
    concepts.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    _recovery_steps(cfg, method)
    _robustness(cfg)
    _eval_backbone(cfg, inputs)
    method.validate(cfg)
    _split_over_processes(cfg)


def missing_inputs(cfg: DictConfig) -> list[str]:
    """The one-line messages of every local input the config points at and that is not there."""
    found = []
    for check in (_model, _data, _eval_backbone):
        try:
            check(cfg)
        except MissingInputError as exc:
            found.append(str(exc))
    return found


def split_batches(cfg: DictConfig) -> dict[str, int]:
    """The batch sizes a data-parallel cell splits over its processes, by key."""
    keys = ["finetune.batch_size", *get_method(cfg.method.name).batch_keys]
    return {key: OmegaConf.select(cfg, key) for key in keys}


def processes_for(cfg: DictConfig, gpus: int) -> int:
    """How many of `gpus` (a SLURM cell's GPUs) a cell can use: the most that divide every
    batch it splits (ESD's batch of 1, as the authors run it, takes one GPU); one for a cell
    that trains nothing (its evaluation runs on one process)."""
    if not get_method(cfg.method.name).work(cfg):
        return 1
    batches = split_batches(cfg).values()
    return max(g for g in range(1, max(gpus, 1) + 1) if gpus % g == 0 and all(b % g == 0 for b in batches))


def _split_over_processes(cfg: DictConfig) -> None:
    """Under torchrun every batch is split over the data-parallel processes (WORLD_SIZE)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    for key, value in split_batches(cfg).items():
        if value % processes:
            raise ConfigError(key, value, f"a multiple of {processes}, the number of data-parallel processes")


def _model(cfg: DictConfig) -> None:
    m = cfg.model
    if m.name == "sd21":
        from harness.models.sd21 import locate

        locate(m)
    else:
        from harness.models.tiny_weights import teacher_weights

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


def _robustness(cfg: DictConfig) -> None:
    """eval.robustness: probes that detect the concept in images, and a prefix that fits the
    text encoder beside the world's concept prompts (every one is 9 words: "a <size> <colour>
    <shape> in the style of <style>"; at real scale a caption's length is known at run time)."""
    rb = cfg.eval.get("robustness")
    if not rb or not rb.enabled:
        return
    if cfg.eval.backbone == "none":
        raise ConfigError("eval.robustness.enabled", True, "false with eval.backbone=none (the probes detect concepts in images)")
    if not rb.iterations:
        raise ConfigError("eval.robustness.iterations", list(rb.iterations), "a non-empty list of attack iterations")
    if rb.floor:
        from harness.robustness import floor

        floor.check(cfg)
    encoder = cfg.model.get("text_encoder")
    if cfg.data.domain == "world" and encoder is not None:
        name = next(iter(concepts.DOMAINS["world"]))
        words = len(concepts.DOMAINS["world"][name].apply("a size colour shape").split())
        room = encoder.max_length - 2 - words
        if rb.tokens > room:
            raise ConfigError("eval.robustness.tokens", rb.tokens, f"at most {room} (model.text_encoder.max_length={encoder.max_length}: "
                              f"start, end and the {words} words of a world concept prompt take the rest)")


def _eval_backbone(cfg: DictConfig, inputs: bool = True) -> None:
    ev = cfg.eval
    if ev.backbone == "world":
        if cfg.data.domain != "world":
            raise ConfigError("eval.backbone", ev.backbone, f"real or none with data={cfg.data.name} (the world's backbones judge world images only)")
        from harness.metrics.world import world_weights

        world_weights(ev.weights, "eval.weights")
    if ev.backbone == "real" and inputs:
        from harness.metrics.real import check

        check(ev.real)
