"""The one training loop. A method states its stages; each stage states its modules, its
optimizers (which parameters, which learning rate), its data streams, which optimizers step
at an iteration, and its losses. The loop owns everything else: optimizers and warm-up,
mixed precision, gradient accumulation, clipping, deterministic per-step randomness,
checkpointing and exact resume, progress and loss logging."""

from __future__ import annotations

import logging
import re
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness import distributed
from harness.data.streams import BatchStream
from harness.files import write_via

log = logging.getLogger("harness")


@dataclass
class Optim:
    """An AdamW optimizer over `params` with linear warm-up to `lr` over its first
    `warmup_steps` steps (its own steps: an upper-level optimizer that steps every K-th
    iteration warms up over K × warmup_steps iterations, as in the authors' code)."""

    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.999)


class Stage(ABC):
    """One training stage of a method."""

    name: str
    steps: int

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Modules whose state a checkpoint holds (the ones being trained)."""

    @abstractmethod
    def optimizers(self) -> dict[str, Optim]:
        """Named optimizers and the parameters each updates."""

    @abstractmethod
    def streams(self) -> dict[str, BatchStream]:
        """Named data streams the losses draw batches from."""

    def updates(self, step: int) -> list[str]:
        """Optimizers that take a step at iteration `step`, in order (default: all, always)."""
        return list(self.optimizers())

    @abstractmethod
    def loss(self, optimizer: str, next_batch: Callable[[str], dict], generator: torch.Generator):
        """The loss that optimizer `optimizer` minimises now: (scalar tensor, {name: detached tensor})."""

    def after_step(self, step: int) -> None:
        """Called after the iteration's optimizer steps (e.g. to update an EMA copy)."""


@dataclass
class TrainConfig:
    seed: int = 0
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    keep_steps: tuple[int, ...] = ()  # checkpoints kept whatever keep_checkpoints says (recovery curves)
    checkpoint_last: bool = True  # False: a fit nothing resumes (the benchmark's last turns; 3.7 GB at SD 2.1's size)
    log_every: int = 10
    progress: bool | None = None  # None: a progress bar only on a terminal


CKPT = re.compile(r"step_(\d+)\.pt$")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Checkpoints in `folder`, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := CKPT.search(p.name))]
    return sorted(found, reverse=True)


class Trainer:
    def __init__(self, config: TrainConfig, device: torch.device, on_log: Callable[[str, int, dict], None] | None = None,
                 on_checkpoint: Callable[[str, int], None] | None = None):
        # on_log(stage, step, means) every log_every steps; on_checkpoint(stage, step) once a
        # checkpoint is on disk (what was logged up to it survives a restart)
        self.config, self.device, self.on_log, self.on_checkpoint = config, device, on_log, on_checkpoint

    def _autocast(self):
        use_bf16 = self.config.precision == "bf16" or (self.config.precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def generator(self, stage: Stage, step: int) -> torch.Generator:
        """Randomness of one iteration as a pure function of (seed, stage, step)."""
        key = zlib.crc32(stage.name.encode()) + 7919 * step + 104_729 * self.config.seed
        return torch.Generator().manual_seed(key)

    def _load_latest(self, folder: Path, stage: Stage, optims: dict) -> tuple[int, dict[str, int], float, dict[str, int] | None]:
        for step, path in checkpoints(folder):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated write: fall back to the one before
                log.warning("checkpoint %s unreadable (%s); trying the previous one", path.name, exc)
                continue
            for name, module in stage.modules().items():
                module.load_state_dict(state["modules"][name])
            for name, opt in optims.items():
                opt.load_state_dict(state["optimizers"][name])
            log.info("resumed stage %s from %s", stage.name, path.name)
            return state["step"], state["streams"], state.get("seconds", 0.0), state.get("updates")
        return 0, {}, 0.0, None

    def _save(self, folder: Path, stage: Stage, optims: dict, step: int, drawn: dict[str, int], seconds: float,
              updates: dict[str, int]) -> None:
        if not distributed.world().main:  # every rank holds the same state: rank 0 writes it
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "modules": {n: m.state_dict() for n, m in stage.modules().items()},
            "optimizers": {n: o.state_dict() for n, o in optims.items()},
            "streams": dict(drawn),
            "seconds": seconds,  # training time of all runs that led here: a resumed build still knows its cost
            "updates": dict(updates),  # steps each optimizer has taken (its warm-up)
        }
        # atomic: a reader sees all of it or nothing
        write_via(folder / f"step_{step:08d}.pt", lambda tmp: torch.save(state, tmp))
        rotating = [(s, p) for s, p in checkpoints(folder) if s not in self.config.keep_steps]
        for _, old in rotating[self.config.keep_checkpoints :]:
            old.unlink(missing_ok=True)

    def fit(self, stage: Stage, folder: Path) -> dict:
        """Train `stage` to `stage.steps` iterations, resuming from the latest checkpoint in
        `folder`. Returns timing figures."""
        cfg = self.config
        specs = stage.optimizers()
        optims = {
            name: torch.optim.AdamW(spec.params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
            for name, spec in specs.items()
        }
        start, drawn, seconds_before, updates = self._load_latest(folder, stage, optims)
        if updates is None:  # a new stage, or a checkpoint from before the count was kept
            updates = {name: sum(name in stage.updates(s) for s in range(start)) for name in optims}
        streams = stage.streams()
        drawn = {name: drawn.get(name, 0) for name in streams}
        iterators = {name: s.iterate(drawn[name]) for name, s in streams.items()}

        def next_batch(name: str) -> dict:
            drawn[name] += 1
            batch = distributed.shard(next(iterators[name]))  # this process's rows of the global batch
            return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

        for module in stage.modules().values():
            module.train()
        pending: dict[str, list[torch.Tensor]] = {}
        t0, cpu0, done = time.perf_counter(), time.process_time(), 0
        main = distributed.world().main
        progress = _progress(stage, start, cfg.progress) if main else None
        with distributed.data_parallel():
            for step in range(start, stage.steps):
                generator = self.generator(stage, step)
                for name in stage.updates(step):
                    opt, spec = optims[name], specs[name]
                    opt.zero_grad(set_to_none=True)
                    for _ in range(cfg.grad_accum):
                        with self._autocast():
                            loss, logs = stage.loss(name, next_batch, generator)
                        (loss / cfg.grad_accum).backward()
                        for key, value in {"loss": loss.detach(), **logs}.items():
                            pending.setdefault(f"{name}/{key}", []).append(value)
                    distributed.average_gradients(spec.params)
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(spec.params, cfg.max_grad_norm)
                    updates[name] += 1
                    scale = min(1.0, updates[name] / spec.warmup_steps) if spec.warmup_steps else 1.0
                    for group in opt.param_groups:
                        group["lr"] = spec.lr * scale
                    opt.step()
                stage.after_step(step)
                done += 1
                last = step + 1 == stage.steps
                if pending and ((step + 1) % cfg.log_every == 0 or last):
                    # One host sync per logging interval, not per step.
                    means = distributed.average({k: torch.stack(v).float().mean().item() for k, v in pending.items()})
                    pending.clear()
                    if self.on_log and main:
                        self.on_log(stage.name, step + 1, means)
                    if progress is not None:
                        progress.set_postfix({k.split("/")[0] + "/" + k.split("/")[-1]: f"{v:.4f}" for k, v in means.items() if k.endswith("/loss")})
                if progress is not None:
                    progress.update(1)
                if (step + 1) % cfg.checkpoint_every == 0 or (last and cfg.checkpoint_last) or step + 1 in cfg.keep_steps:
                    self._save(folder, stage, optims, step + 1, drawn, seconds_before + time.perf_counter() - t0, updates)
                    if self.on_checkpoint and main:
                        self.on_checkpoint(stage.name, step + 1)
        if progress is not None:
            progress.close()
        for module in stage.modules().values():
            module.eval()
        seconds = time.perf_counter() - t0
        # CPU seconds (all threads) beside wall: what harness.plan calibrates a CPU's rate by
        return {"steps_run": done, "seconds": seconds, "seconds_per_step": seconds / done if done else None,
                "seconds_total": seconds_before + seconds, "cpu_seconds": time.process_time() - cpu0}


def _progress(stage: Stage, start: int, enabled: bool | None):
    from tqdm import tqdm

    disable = None if enabled is None else not enabled  # None: tqdm shows a bar only on a terminal
    return tqdm(total=stage.steps, initial=start, desc=stage.name, disable=disable, leave=False)
