"""Every config key, declared: its type and range, checked once when a cell or a sweep is
planned (before anything is written).

The declarations mirror the config groups: the root sections here, `model` and `data` per
choice, the method's keys in its class (`Method.keys`, methods/), the eraser's in
methods/erasers.py. `check(cfg)` walks every leaf of a composed config:
- a declared key must hold a value of its declaration (one line naming key, value, accepted);
- a `method.*` or `eraser.*` key another method or eraser declares is accepted (a sweep over
  methods sets K for all of them), one that none declares is an error naming those that do;
- any other undeclared key is an error, so a key added to a YAML file without a declaration
  here fails at once (tests/test_configs.py composes every config through this check).
Cross-key rules (a recovery step within training, world backbones only on world images, files
that must exist) stay in harness/validate.py."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

# pruning.importance's accepted values (harness/pruning.py implements them). Declared here, not
# imported from there: checking a config must not import diffusers (3.6 CPU-s of a process
# that only submits to SLURM or fails validation)
IMPORTANCES = ("magnitude", "random", "taylor")


class Spec:
    """A declared key: `check` raises ConfigError naming what is accepted."""

    nullable: bool = False

    def accepted(self) -> str:
        raise NotImplementedError

    def ok(self, value) -> bool:
        raise NotImplementedError

    def check(self, key: str, value) -> None:
        if value is None and self.nullable:
            return
        if value is None or not self.ok(value):
            raise ConfigError(key, value, self.accepted() + (" or null" if self.nullable else ""))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number(Spec):
    integer: bool = False
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    nullable: bool = False

    def ok(self, value) -> bool:
        if not _is_number(value) or (self.integer and not isinstance(value, int)) or value != value:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def accepted(self) -> str:
        what = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            if self.low_open and self.high_open:
                return f"{what} strictly between {self.low:g} and {self.high:g}"
            return f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '≥'} {self.low:g}"
        return what


def positive_int(nullable: bool = False) -> Number:
    return Number(integer=True, low=0, low_open=True, nullable=nullable)


def count() -> Number:
    return Number(integer=True, low=0)


def positive() -> Number:
    return Number(low=0, low_open=True)


def non_negative() -> Number:
    return Number(low=0)


@dataclass(frozen=True)
class Bool(Spec):
    nullable: bool = False

    def ok(self, value) -> bool:
        return isinstance(value, bool)

    def accepted(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(Spec):
    values: tuple
    nullable: bool = False

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def accepted(self) -> str:
        return f"one of {', '.join(self.values)}"


def choice(*values: str, nullable: bool = False) -> Choice:
    return Choice(tuple(values), nullable)


@dataclass(frozen=True)
class Text(Spec):
    """A non-empty string (a name, a path: whether a path exists is validate.py's business)."""

    nullable: bool = False
    what: str = "a non-empty string"

    def ok(self, value) -> bool:
        return isinstance(value, str) and value.strip() != ""

    def accepted(self) -> str:
        return self.what


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    nullable: bool = False

    def ok(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(self.item.ok(v) for v in value)

    def accepted(self) -> str:
        return f"a list, each item {self.item.accepted()}"


@dataclass(frozen=True)
class Device(Spec):
    nullable: bool = False

    def ok(self, value) -> bool:
        return isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value) is not None

    def accepted(self) -> str:
        return "auto, cpu, cuda, cuda:<index> or mps"


PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class OutDir(Spec):
    """A folder this process can create or write into, on a real file system."""

    nullable: bool = False

    def accepted(self) -> str:
        return "a writable folder (or one that can be created)"

    def ok(self, value) -> bool:
        return self.problem(value) is None

    @staticmethod
    def problem(value) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "empty"
        path = Path(value).expanduser().resolve()
        if any(path == Path(p) or Path(p) in path.parents for p in PSEUDO_FILE_SYSTEMS):
            return "a pseudo file system"
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
        try:  # what counts is whether a file can be made there (root ignores mode bits; a read-only mount does not)
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".harness-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"{existing}: {exc.strerror}"
        return None

    def check(self, key: str, value) -> None:
        if (why := self.problem(value)) is not None:
            raise ConfigError(key, value, f"{self.accepted()}; here: {why}")


PATH = Text(nullable=True, what="a path")
NAME = Text()

# -- the root sections ----------------------------------------------------------------------
ROOT: dict = {
    "seed": count(),
    "out_dir": OutDir(),
    "sweep_name": Text(nullable=True),
    "train": {
        "precision": choice("auto", "fp32", "bf16"),
        "grad_accum": positive_int(),
        "max_grad_norm": non_negative(),
    },
    "finetune": {
        "steps": count(),
        "lr": positive(),
        "batch_size": positive_int(),
        "warmup_steps": count(),
        "weight_decay": non_negative(),
        "caption_dropout": Number(low=0, high=1, high_open=True),
        "loss": {"diffusion": non_negative(), "output_kd": non_negative(), "feature_kd": non_negative(),
                 "min_snr_gamma": non_negative()},
    },
    "runtime": {
        "device": Device(),
        "num_workers": count(),
        "checkpoint_every": positive_int(),
        "keep_checkpoints": positive_int(),  # 0 would delete every checkpoint: no resume
        "log_every": positive_int(),
        "progress": Bool(nullable=True),
        "reproducible": Bool(),
        "threads": positive_int(nullable=True),
    },
    "tracking": {
        "enabled": Bool(),
        "uri": Text(nullable=True, what="a tracking URI (http://host:port, sqlite:///path, ...)"),
        "experiment": NAME,
        "artifacts": choice("auto", "out_dir"),
        "parent_run_id": Text(nullable=True),
        "flush_every_s": non_negative(),
    },
    "pruning": {
        "ratio": Number(low=0, low_open=True, high=1, high_open=True),
        "importance": choice(*IMPORTANCES),
    },
    "concepts": {"erase": ListOf(NAME), "retain": ListOf(NAME)},
    "eval": {
        "concepts": choice("auto", "all", "set"),
        "batch_size": positive_int(),
        "seed": count(),
        "sample_steps": positive_int(),
        "sampler": choice("ddim", "pndm"),
        "guidance": positive(),
        "grid_neutral": count(),
        "backbone": choice("none", "world", "real"),
        "weights": PATH,
        "real": {"reference": PATH, "fid_mode": choice("legacy_pytorch", "clean"), "clip": PATH, "cmmd_clip": PATH, "csd": PATH},
        "neutral_prompts": positive_int(),
        "reference_images": positive_int(),
        "concept_prompts": positive_int(),
        "recovery_steps": ListOf(positive_int()),
        "robustness": {
            "enabled": Bool(),
            "prompts": positive_int(),
            "tokens": positive_int(),
            "objective": choice("unlearndiff", "p4d"),
            "iterations": ListOf(positive_int()),
            "lr": positive(),
            "weight_decay": non_negative(),
            "neighbours": Bool(),
            "relearn_images": positive_int(),
            "relearn_steps": count(),
            "relearn_every": positive_int(),
            "relearn_lr": positive(),
            "relearn_within": non_negative(),
            "floor": Bool(),
            "floor_weights": PATH,
        },
    },
}

PREDICTION = choice("epsilon", "v_prediction")
# model/<choice>: the tiny architecture (world: the same with the shipped weights), SD 2.1
TINY = {
    "name": NAME, "resolution": positive_int(), "prediction_type": PREDICTION, "guidance": positive(),
    "init_seed": count(), "weights": PATH,
    "text_encoder": {"hidden_size": positive_int(), "layers": positive_int(), "heads": positive_int(), "max_length": positive_int()},
    "unet": {"in_channels": positive_int(), "out_channels": positive_int(), "block_out_channels": ListOf(positive_int()),
             "layers_per_block": positive_int(), "down_block_types": ListOf(NAME), "up_block_types": ListOf(NAME),
             "attention_head_dim": positive_int(), "norm_num_groups": positive_int()},
    "scheduler": {"num_train_timesteps": positive_int(), "beta_schedule": choice("linear", "scaled_linear", "squaredcos_cap_v2")},
}
MODELS = {
    "world": TINY,
    "tiny": TINY,
    "sd21": {"name": NAME, "path": PATH, "repo_id": NAME, "resolution": positive_int(), "prediction_type": PREDICTION,
             "guidance": positive()},
}
BACKBONES = choice("world", "real", "none")
DATA = {
    "world": {"name": NAME, "domain": choice("world"), "seed": count(), "finetune_size": positive_int(),
              "concept_size": positive_int(), "heldout_size": positive_int(), "backbone": BACKBONES},
    "coco": {"name": NAME, "domain": choice("art"), "root": PATH, "concept_source": PATH, "heldout_concept_source": PATH,
             "heldout_size": positive_int(), "limit": positive_int(nullable=True), "backbone": BACKBONES},
}


def _flat(tree: dict, prefix: str = "") -> dict[str, Spec]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _group(section: str, name, choices: dict[str, dict]) -> dict[str, Spec]:
    if name not in choices:
        raise ConfigError(section, name, f"one of {', '.join(sorted(choices))}")
    return {f"{section}.{k}": v for k, v in _flat(choices[name]).items()}


def method_keys() -> dict[str, dict]:
    from harness.method import REGISTRY, method_names

    return {name: {"name": NAME, **REGISTRY[name].keys} for name in method_names()}


def eraser_keys() -> dict[str, dict]:
    from harness.method import eraser_keys as registered

    return {name: {"name": NAME, **declared} for name, declared in registered().items()}


def declared(cfg: DictConfig) -> tuple[dict[str, Spec], dict[str, set[str]]]:
    """The declared keys of `cfg` (dotted → spec), and for the plugin sections (method,
    eraser) the keys any of their choices declares."""
    specs = _flat(ROOT)
    specs.update(_group("model", cfg.model.get("name"), MODELS))
    specs.update(_group("data", cfg.data.get("name"), DATA))
    methods, erasers = method_keys(), eraser_keys()
    specs.update(_group("method", cfg.method.get("name"), methods))
    specs.update(_group("eraser", cfg.eraser.get("name"), erasers))
    elsewhere = {"method": {k for d in methods.values() for k in _flat(d)}, "eraser": {k for d in erasers.values() for k in _flat(d)}}
    return specs, elsewhere


def _leaves(tree, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def _who_declares(section: str, registry: dict[str, dict]) -> str:
    with_keys = [f"{name} declares {', '.join(k for k in _flat(d) if k != 'name')}" for name, d in sorted(registry.items())
                 if len(d) > 1]
    without = [name for name, d in sorted(registry.items()) if len(d) == 1]
    return "; ".join(with_keys + ([f"{', '.join(without)} declare none"] if without else []))


def check(cfg: DictConfig) -> None:
    """Every leaf of `cfg` declared and within its declaration; every declared key present."""
    specs, elsewhere = declared(cfg)
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    tree.pop("tune", None)  # a tuning sweep's block: its own grammar (harness/tune/spec.py, checked by validate)
    leaves = dict(_leaves(tree))
    for key, value in leaves.items():
        spec = specs.get(key)
        if spec is not None:
            spec.check(key, value)
            continue
        section, _, rest = key.partition(".")
        if section in elsewhere:
            if rest in elsewhere[section]:
                continue  # another method's (eraser's) key: this one ignores it
            registry = method_keys() if section == "method" else eraser_keys()
            raise ConfigError(key, value, f"no {section} declares {section}.{rest} ({_who_declares(section, registry)})")
        raise ConfigError(key, value, "not a config key (declared keys: harness/schema.py; python -m harness --cfg job lists them)")
    for key in specs:
        if key not in leaves and not any(k.startswith(key + ".") for k in leaves):
            raise ConfigError(key, "missing", "a value: the key is declared but absent from the config")
