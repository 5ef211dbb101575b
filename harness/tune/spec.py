"""A sweep's `tune:` block, parsed and checked before any worker starts.

    tune:
      space:                                  # config keys (nested as in the config) -> range
        method:
          K: {int: [2, 40], log: true}
          upper_lr: {float: [1.0e-4, 1.0e-2], log: true}
          upper_params: {choice: [xattn, noxattn, full]}
      objectives: {fid: minimize, presence/erased: minimize}
      constraints: ["presence/retained >= 65"]  # feasible when it holds
      trials: 24        # budget: trials that end COMPLETE (or PRUNED)
      workers: 2        # processes asking the one study
      sampler: tpe      # tpe (Optuna's default: multivariate, constant liar) | nsga2
      seed: 0
      storage: null     # null: a journal file under <out_dir>/optuna/; or an RDB URL
      pruner: null      # null | median | hyperband: stop unpromising trials at eval.recovery_steps
                        # (single-objective studies only: Optuna cannot prune multi-objective ones)

Objective and constraint metrics are a cell's metrics (results.json), or `presence/erased`,
`presence/retained` (means over the concept set's erased / retained styles); with
`eval.robustness.enabled=true`, the probes' (`robust/asr_soft/erased`, ...: harness/robustness)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError

DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "nsga2")
PRUNERS = ("median", "hyperband")
AGGREGATES = ("presence/erased", "presence/retained")
CONSTRAINT = re.compile(r"^\s*(\S+)\s*(<=|>=)\s*(-?[0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # int | float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def describe(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log, "choices": list(self.choices)}


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def value(self, metrics: dict) -> float:
        """Optuna's convention: feasible when ≤ 0."""
        got = metrics[self.metric]
        return got - self.bound if self.op == "<=" else self.bound - got

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class TuneSpec:
    space: tuple[Param, ...]
    objectives: tuple[tuple[str, str], ...]  # (metric, direction)
    constraints: tuple[Constraint, ...] = ()
    trials: int = 12
    workers: int = 1
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    pruner: str | None = None

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    def identity(self) -> dict:
        """What makes the study: a changed space or objective is a new study."""
        return {"space": {p.key: p.describe() for p in self.space}, "objectives": [list(o) for o in self.objectives],
                "constraints": [str(c) for c in self.constraints], "sampler": self.sampler, "seed": self.seed}


def known_metrics(cfg: DictConfig) -> set[str]:
    """The metric names a cell of `cfg` reports (image metrics only with a metric backbone)."""
    from harness import concepts

    erase, retain = concepts.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    names = {c.name for c in [*erase, *retain]}  # every cell measures its set (eval.concepts: set, auto or all)
    image = cfg.eval.backbone != "none"
    out = {"heldout_mse"} | {f"alignment/{n}" for n in names}
    if image:
        out |= {"fid", "clip_score", "cmmd"} | {f"{m}/{n}" for m in ("presence", "clip_concept", "csd", "cp") for n in names}
        out |= set(AGGREGATES)
    from harness import robustness

    if robustness.wanted(cfg):  # eval.robustness: a trial's cell is probed when it ends
        out |= {f"robust/{m}/{n}" for m in robustness.PER_CONCEPT for n in [*(c.name for c in erase), "erased"]}
        if cfg.eval.robustness.neighbours:
            out.add("robust/neighbour_retention")
    return out


def _range(key: str, spec, kind: str) -> tuple[float, float]:
    bounds = spec.get(kind)
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"tune.space.{key}.{kind}", bounds, "[low, high], two numbers")
    low, high = bounds
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ConfigError(f"tune.space.{key}.int", list(bounds), "[low, high], two integers")
    if not low < high:
        raise ConfigError(f"tune.space.{key}.{kind}", list(bounds), "low < high")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"tune.space.{key}.{kind}", list(bounds), "low > 0 on a log scale")
    return low, high


def _flatten_space(tree, prefix: str = "") -> dict:
    """`space` as {dotted key: range}: written nested like the config (method: {K: {...}}),
    so that one bound can be overridden on the command line, or with dotted keys."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not {"int", "float", "choice"} & set(value):
            out.update(_flatten_space(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse(cfg: DictConfig) -> TuneSpec:
    """The `tune` block of a composed config, checked (ConfigError in one line)."""
    block = OmegaConf.to_container(cfg.tune, resolve=True)
    if not isinstance(block, dict):
        raise ConfigError("tune", block, "a block with space, objectives, trials")
    keys = ("space", "objectives", "constraints", "trials", "workers", "sampler", "seed", "storage", "pruner")
    unknown = set(block) - set(keys)
    if unknown:
        raise ConfigError(f"tune.{sorted(unknown)[0]}", block[sorted(unknown)[0]], ", ".join(keys))
    space = _flatten_space(block.get("space") or {})
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space", space, "at least one config key with its range")
    from harness import schema

    declared, elsewhere = schema.declared(cfg)
    params = []
    for key, spec in space.items():
        section, _, rest = key.partition(".")
        if key not in declared and not (section in elsewhere and rest in elsewhere[section]):
            raise ConfigError(f"tune.space.{key}", spec, "a declared config key (harness/schema.py; a method's or eraser's keys)")
        if section in elsewhere and key not in declared:
            raise ConfigError(f"tune.space.{key}", spec, f"a key of this sweep's {section} ({cfg[section].name} does not declare {rest})")
        if not isinstance(spec, dict):
            raise ConfigError(f"tune.space.{key}", spec, "{int: [low, high]}, {float: [low, high]} (log: true) or {choice: [...]}")
        kinds = [k for k in ("int", "float", "choice") if k in spec]
        if len(kinds) != 1 or set(spec) - {"int", "float", "choice", "log"}:
            raise ConfigError(f"tune.space.{key}", spec, "one of int: [low, high], float: [low, high], choice: [...], and log: true|false")
        kind = kinds[0]
        if kind == "choice":
            values = spec["choice"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"tune.space.{key}.choice", values, "a non-empty list")
            for v in values:  # each choice must be a value the key accepts
                declared[key].check(key, v)
            params.append(Param(key, "choice", choices=tuple(values)))
        else:
            low, high = _range(key, spec, kind)
            for v in (low, high):
                declared[key].check(key, int(v) if kind == "int" else float(v))
            params.append(Param(key, kind, low, high, bool(spec.get("log", False))))
    objectives = block.get("objectives") or {}
    if not isinstance(objectives, dict) or not objectives:
        raise ConfigError("tune.objectives", objectives, "metric: minimize|maximize, at least one")
    known = known_metrics(cfg)
    for metric, direction in objectives.items():
        if metric not in known:
            raise ConfigError(f"tune.objectives.{metric}", direction, f"a metric this sweep's cells report: {', '.join(sorted(known))}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"tune.objectives.{metric}", direction, "minimize or maximize")
    constraints = []
    for text in block.get("constraints") or []:
        m = CONSTRAINT.match(str(text))
        if not m or m.group(1) not in known or not math.isfinite(float(m.group(3))):
            raise ConfigError("tune.constraints", text, f"'<metric> <= <number>' or '<metric> >= <number>', metric one of {', '.join(sorted(known))}")
        constraints.append(Constraint(m.group(1), m.group(2), float(m.group(3))))
    trials, workers, seed = block.get("trials", 12), block.get("workers", 1), block.get("seed", 0)
    for key, value, low in (("trials", trials, 1), ("workers", workers, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"tune.{key}", value, f"an integer ≥ {low}")
    sampler = block.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError("tune.sampler", sampler, f"one of {', '.join(SAMPLERS)}")
    storage = block.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError("tune.storage", storage, "null (a journal file under out_dir) or a database URL (postgresql://...)")
    if storage and storage.startswith("sqlite") and workers > 1:
        raise ConfigError("tune.storage", storage, f"a journal (null) or a server database with {workers} workers: SQLite fails under concurrent writers")
    pruner = _pruner(block.get("pruner"), objectives, cfg)
    return TuneSpec(tuple(params), tuple(objectives.items()), tuple(constraints), trials, workers, sampler, seed, storage, pruner)


def probed(metric: str) -> bool:
    """Whether evaluation.probe measures `metric` mid-training (CSD and CP need the reference
    model's images, alignment the full evaluation: those are known only at the end)."""
    return metric in ("heldout_mse", "fid", "clip_score", "cmmd", *AGGREGATES) or metric.split("/")[0] in ("presence", "clip_concept")


def _pruner(pruner, objectives: dict, cfg: DictConfig) -> str | None:
    if pruner in (None, "none"):
        return None
    if pruner not in PRUNERS:
        raise ConfigError("tune.pruner", pruner, f"null or one of {', '.join(PRUNERS)}")
    if len(objectives) > 1:
        raise ConfigError("tune.pruner", pruner, f"null with {len(objectives)} objectives: Optuna prunes single-objective studies only")
    metric = next(iter(objectives))
    if not probed(metric):
        raise ConfigError("tune.pruner", pruner, f"null for objective {metric}: it is measured only when a cell ends "
                                                 "(prunable: heldout_mse, fid, clip_score, cmmd, presence/*, clip_concept/*)")
    if not list(cfg.eval.recovery_steps or []):
        raise ConfigError("tune.pruner", pruner, "set with eval.recovery_steps, the training steps where a trial is measured "
                                                 "and may be stopped (e.g. eval.recovery_steps=[50,100])")
    return pruner
