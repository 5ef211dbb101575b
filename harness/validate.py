"""Check a resolved config before any job starts. Every failure is a ConfigError (or
MissingInputError) whose message is one line naming the key, the value and what is accepted."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import concepts
from harness.data import DATA_NAMES
from harness.errors import ConfigError, MissingInputError
from harness.method import check_positive, get_method
from harness.pruning import IMPORTANCES

MODELS = ("world", "tiny", "sd21")
PRECISIONS = ("auto", "fp32", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def validate(cfg: DictConfig) -> None:
    method = get_method(cfg.method.name)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError("seed", cfg.seed, "an integer ≥ 0")
    _model(cfg)
    _data(cfg)
    ratio = cfg.pruning.ratio
    if method.prunes and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0):
        raise ConfigError("pruning.ratio", ratio, "a number strictly between 0 and 1")
    if cfg.pruning.importance not in IMPORTANCES:
        raise ConfigError("pruning.importance", cfg.pruning.importance, f"one of {', '.join(IMPORTANCES)}")
    if cfg.train.precision not in PRECISIONS:
        raise ConfigError("train.precision", cfg.train.precision, f"one of {', '.join(PRECISIONS)}")
    check_positive(cfg, "train.grad_accum", int)
    check_positive(cfg, "train.max_grad_norm", allow_zero=True)
    check_positive(cfg, "finetune.steps", int, allow_zero=True)
    check_positive(cfg, "finetune.lr")
    check_positive(cfg, "finetune.batch_size", int)
    check_positive(cfg, "finetune.warmup_steps", int, allow_zero=True)
    check_positive(cfg, "finetune.weight_decay", allow_zero=True)
    if not 0.0 <= cfg.finetune.caption_dropout < 1.0:
        raise ConfigError("finetune.caption_dropout", cfg.finetune.caption_dropout, "a probability in [0, 1)")
    for key in ("diffusion", "output_kd", "feature_kd", "min_snr_gamma"):
        check_positive(cfg, f"finetune.loss.{key}", allow_zero=True)
    concepts.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    if cfg.eval.concepts not in ("all", "set", "auto"):
        raise ConfigError("eval.concepts", cfg.eval.concepts, "all, set or auto")
    for key in ("batch_size", "sample_steps"):
        check_positive(cfg, f"eval.{key}", int)
    if cfg.eval.get("sampler") not in ("ddim", "pndm"):
        raise ConfigError("eval.sampler", cfg.eval.get("sampler"), "ddim or pndm")
    check_positive(cfg, "eval.grid_neutral", int, allow_zero=True)
    _recovery_steps(cfg, method)
    _eval_backbone(cfg)
    check_positive(cfg, "runtime.checkpoint_every", int)
    check_positive(cfg, "runtime.log_every", int)
    if not isinstance(cfg.runtime.get("reproducible"), bool):
        raise ConfigError("runtime.reproducible", cfg.runtime.get("reproducible"), "true or false")
    if cfg.runtime.get("threads") is not None:
        check_positive(cfg, "runtime.threads", int)
    method.validate(cfg)
    _split_over_processes(cfg)


def _split_over_processes(cfg: DictConfig) -> None:
    """Under torchrun every batch is split over the data-parallel processes (WORLD_SIZE)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    keys = ["finetune.batch_size", "eraser.batch_size"] + (["method.upper_batch_size"] if cfg.method.name == "bilevel" else [])
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value % processes:
            raise ConfigError(key, value, f"a multiple of {processes}, the number of data-parallel processes")


def _model(cfg: DictConfig) -> None:
    m = cfg.model
    if m.name not in MODELS:
        raise ConfigError("model", m.name, f"one of {', '.join(MODELS)}")
    if m.prediction_type not in PREDICTION_TYPES:
        raise ConfigError("model.prediction_type", m.prediction_type, f"one of {', '.join(PREDICTION_TYPES)}")
    if m.name == "sd21":
        from harness.models.sd21 import locate

        locate(m)
    else:
        from harness.models.tiny import teacher_weights

        teacher_weights(m)  # fails in one line when the weights file asked for is missing
    check_positive(cfg, "model.guidance", float)


def _data(cfg: DictConfig) -> None:
    d = cfg.data
    if d.name not in DATA_NAMES:
        raise ConfigError("data", d.name, f"one of {', '.join(DATA_NAMES)}")
    if d.domain not in concepts.DOMAINS:
        raise ConfigError("data.domain", d.domain, f"one of {', '.join(concepts.DOMAINS)}")
    if d.name == "world":
        for key in ("finetune_size", "concept_size", "heldout_size"):
            check_positive(cfg, f"data.{key}", int)
    else:
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
    if ev.backbone not in ("none", "world", "real"):
        raise ConfigError("eval.backbone", ev.backbone, "none, world or real")
    if ev.backbone == "world":
        if cfg.data.domain != "world":
            raise ConfigError("eval.backbone", ev.backbone, f"real or none with data={cfg.data.name} (the world's backbones judge world images only)")
        from harness.metrics.world import world_weights

        world_weights(ev.weights, "eval.weights")
    if ev.backbone == "real":
        from harness.metrics.real import check

        check(ev.real)
    if ev.backbone != "none":
        for key in ("neutral_prompts", "concept_prompts", "reference_images"):
            check_positive(cfg, f"eval.{key}", int)
