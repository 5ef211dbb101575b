"""The interface every method in `methods/` implements, and the method registry.

A method is a class with a `name`, the config sections that define its cells, a `validate`
for its own config keys, and `stages()`: the training stages the shared loop runs. Methods
are discovered from the `methods` package: adding one is a new file there plus
`harness/conf/method/<name>.yaml`."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from harness.errors import ConfigError
from harness.trainer import Stage

if TYPE_CHECKING:
    from harness.context import CellContext

# Config sections that define every cell, whatever its method.
COMMON_SECTIONS = ("seed", "model", "data", "pruning", "train", "finetune", "method", "eval")


@dataclass(frozen=True)
class BenchStep:
    """One training step `python -m harness.bench` times for a method: its row name, the
    overrides that make its config, the stage's every-step optimizer and its every-K-steps one
    (None: it has none), the ratio to the baseline step it must hold (None: its FLOP-count
    theory ± 10% is its only target), and whether a GPU run times it too."""
    name: str
    overrides: tuple[str, ...]
    optimizer: str = "lower"
    upper: str | None = None
    cap: float | None = None
    on_gpu: bool = False


@dataclass(frozen=True)
class Work:
    """What one training stage computes, for the plan's cost model (harness/plan.py):
    `steps` iterations of `batch` images, each image costing `trained` forward passes whose
    backward reaches the parameters `subset` (harness/models/subsets.py: a backward over a
    subset costs what the plan measures for it), `student` gradient-free forwards of a
    student-sized UNet, `teacher` forwards of the teacher's UNet and `encode` VAE encodes
    (latent models). Multiplied by the models' MACs per image, that is the stage's work;
    torch's FLOP counter agrees on every method's stage (tests/test_plan.py). `trains`: the
    student-sized copy it updates (one AdamW state each, for memory and checkpoints)."""
    stage: str
    steps: int
    batch: int
    trained: float = 0.0
    student: float = 0.0
    teacher: float = 0.0
    encode: float = 0.0
    subset: str = "full"
    trains: str = "student"


def lower_work(cfg, stage: str, steps: int | None = None, every: int = 1, trains: str = "student") -> Work:
    """The lower-level loss L_ft, `steps` (default finetune.steps) // `every` times: a student
    forward and backward over all its parameters per image, one teacher forward when a KD term
    is on (output and feature KD share it), the images' VAE encode."""
    loss = cfg.finetune.loss
    kd = 1.0 if (loss.output_kd or loss.feature_kd) else 0.0
    return Work(stage, (cfg.finetune.steps if steps is None else steps) // every, cfg.finetune.batch_size,
                trained=1.0, teacher=kd, encode=1.0, trains=trains)


class Method(ABC):
    name: ClassVar[str]
    # The config sections every cell of this method depends on, and those beyond them that
    # change what it trains.
    common_sections: ClassVar[tuple[str, ...]] = COMMON_SECTIONS
    sections: ClassVar[tuple[str, ...]] = ()
    # The method's own config keys (`method.<key>`) with their types and ranges (harness/schema.py)
    keys: ClassVar[dict] = {}
    prunes: ClassVar[bool] = True  # False: the cell evaluates the unpruned teacher itself
    erases: ClassVar[bool] = True  # False: the cell is a reference for every concept set
    # What tables and tools need to know, asked of the method rather than coded by its name:
    order: ClassVar[int] = 50  # where its rows sit among a table's methods (lower first)
    inner_steps_key: ClassVar[str | None] = None  # a key its rows are told apart by and ablated over (bilevel: method.K)
    batch_keys: ClassVar[tuple[str, ...]] = ()  # its own batch sizes (each split over data-parallel processes)
    continues_reference: ClassVar[bool] = False  # trains on from its reference cell: its cost includes that cell's
    # The plain fine-tuning every other method is measured against (one method declares it:
    # distillation): the benchmark's baseline step and its hand-written twin, the student the
    # noise benchmark evaluates, the cell whose start-up the per-cell overhead times.
    baseline: ClassVar[bool] = False

    def __init__(self, ctx: CellContext):
        self.ctx = ctx
        self.cfg = ctx.cfg

    @classmethod
    def validate(cls, cfg) -> None:
        """Cross-key rules of this method (each key's type and range: `keys`); raise
        ConfigError naming the bad value."""

    @classmethod
    def label(cls, params: dict) -> str:
        """How its rows read in tables, figures and `harness.jobs status`, from a cell's
        flattened config (values as MLflow holds them: JSON text)."""
        return cls.name

    @classmethod
    def published(cls, params: dict) -> dict | None:
        """The paper's published style-removal numbers for this method (as `params` sets it
        up), shown beside real-scale rows; None: the paper has none."""
        return None

    @classmethod
    def reference(cls, cfg):
        """The config of the cell this one is compared with (CSD and CP against its images)
        and, with `continues_reference`, starts from; None: none (it is its own reference)."""
        return None

    @classmethod
    def trained_steps(cls, cfg) -> int | None:
        """Iterations of the method's last stage (None: it trains nothing): the steps at which
        `eval.recovery_steps` may measure it."""
        return cfg.finetune.steps

    @classmethod
    def work(cls, cfg) -> list[Work]:
        """What its stages compute (harness/plan.py turns it into MACs, time and GPU-hours): by
        default the lower-level fine-tuning of `finetune.steps`."""
        return [lower_work(cfg, "finetune")]

    @classmethod
    def bench_steps(cls, ks: tuple[int, ...]) -> list[BenchStep]:
        """The steps `python -m harness.bench` times for this method (`ks`: the inner-step
        counts it asks for, where the method has one); []: none."""
        return []

    def bench_stage(self) -> Stage:
        """The stage the benchmark times, built on the context's pruned student as it is (no
        reference cell loaded): by default the method's first stage."""
        return next(iter(self.stages()))

    @abstractmethod
    def stages(self) -> Iterator[Stage]:
        """The stages to train, in order (a generator: a stage may depend on the previous)."""


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


_discovered = False


def _discover() -> None:
    """Import every module of the `methods` package, then those of the HARNESS_METHODS folders
    (each as `harness_methods.<folder>.<module>`): their @register decorators fill REGISTRY."""
    global _discovered
    if not _discovered:
        import methods

        from harness.compose import method_dirs

        for info in pkgutil.iter_modules(methods.__path__):
            importlib.import_module(f"methods.{info.name}")
        for folder in method_dirs():
            for path in sorted(folder.glob("*.py")):
                name = f"harness_methods.{folder.name}.{path.stem}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    spec.loader.exec_module(module)
        _discovered = True


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in REGISTRY:
        raise ConfigError("method", name, f"one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_names() -> list[str]:
    _discover()
    return sorted(REGISTRY)


def baseline_method() -> type[Method]:
    _discover()
    found = [cls for cls in REGISTRY.values() if cls.baseline]
    if len(found) != 1:
        raise RuntimeError(f"exactly one method must declare baseline = True; found {len(found)}: {[c.name for c in found]}")
    return found[0]


# The erasers (methods/erasers.py: ESD, concept ablation) are shared by methods, not methods
# themselves; their module registers its config keys here, as a method's class carries its own.
_ERASER_KEYS: list = []


def register_eraser_keys(declare) -> None:
    """`declare()` -> {eraser name: {key: Spec}}, called when the keys are first needed."""
    _ERASER_KEYS.append(declare)


def eraser_keys() -> dict[str, dict]:
    _discover()
    out: dict[str, dict] = {}
    for declare in _ERASER_KEYS:
        out.update(declare())
    return out


def check_positive(cfg, key: str, kind=float, allow_zero: bool = False) -> None:
    """Validate one numeric config key (dotted path)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = ok_type and float(value).is_integer()
    if not ok_type or value < 0 or (value == 0 and not allow_zero):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(key, value, f"{what} {'≥ 0' if allow_zero else '> 0'}")
