"""Training-step benchmarks: each method's step through the harness's own loop (the stages the
methods yield, run by `harness.trainer.Trainer`), and the hand-written loop beside them.

A variant is one config of one stage. Every variant trains a fresh copy of the same pruned
student on the same data streams. The variants' loops run in turn, a few steps each
(measure.round_robin); a variant's figure is its mean step time over a window after warm-up.
The window holds a whole number of upper steps for every K benchmarked, so a bilevel figure is
its true mean cost per lower step."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.bench import plain_loop as plain
from harness.bench.measure import PeakMemory, count_flops, sync
from harness.context import CellContext
from harness.method import BenchStep, get_method
from harness.trainer import Stage, Trainer, TrainConfig


@dataclass
class Variant:
    """A method's BenchStep, with what the benchmark needs to know of its method: whether its
    step is the baseline, and whether it trains on from the baseline's cell (two-stage's eraser)."""
    step: BenchStep
    baseline: bool = False
    continues: bool = False

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def overrides(self) -> list[str]:
        return list(self.step.overrides)

    @property
    def optimizer(self) -> str:
        return self.step.optimizer

    @property
    def upper(self) -> str | None:
        return self.step.upper


def method_stage(ctx: CellContext) -> Stage:
    """The stage the context's method has the benchmark time (Method.bench_stage)."""
    return get_method(ctx.cfg.method.name)(ctx).bench_stage()


def variant_context(base: CellContext, cfg: DictConfig, student: torch.nn.Module) -> CellContext:
    """The base context with another config and a fresh copy of the pruned student: the
    teacher, the data and the text cache are shared, nothing a variant trains is."""
    return dataclasses.replace(base, cfg=cfg, student=copy.deepcopy(student).requires_grad_(True))


def trainer_for(cfg: DictConfig, device, on_log=None, log_every: int = 10) -> Trainer:
    return Trainer(
        TrainConfig(seed=cfg.seed, grad_accum=cfg.train.grad_accum, max_grad_norm=cfg.train.max_grad_norm,
                    precision=cfg.train.precision, checkpoint_every=10**9, log_every=log_every, progress=False),
        device, on_log,
    )


class HarnessLoop:
    """`stage` in the harness's own loop (`Trainer.fit`), advanced a turn at a time: each turn
    is a `fit` to a later step that resumes from the previous turn's checkpoint, as a resumed
    cell does (the last turn writes none: nothing resumes it). A step is timed from the loop
    asking the stage which optimizers step (`Stage.updates`, the first call of an iteration)
    to the stage's after-step hook (the last); setup, logging and checkpoints between turns
    fall outside. Logging as in a cell."""

    def __init__(self, stage: Stage, cfg: DictConfig, device: torch.device, steps: int, log_every: int = 10):
        self.stage, self.steps, self.device, self.done = stage, steps, device, 0
        self.trainer = trainer_for(cfg, device, log_every=log_every)
        self._folder = tempfile.TemporaryDirectory()
        self._durations: list[float] = []
        updates, after = stage.updates, stage.after_step

        def timed_updates(step):
            sync(device)
            self._t0 = time.perf_counter()
            return updates(step)

        def timed_after(step):
            after(step)
            sync(device)
            self._durations.append(time.perf_counter() - self._t0)

        stage.updates, stage.after_step = timed_updates, timed_after

    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def advance(self, n: int) -> list[float]:
        self._durations = []
        self.stage.steps = min(self.done + n, self.steps)
        self.trainer.config.checkpoint_last = self.stage.steps < self.steps  # only a turn that another resumes
        self.trainer.fit(self.stage, Path(self._folder.name))
        self.done = self.stage.steps
        if self.finished:
            self._folder.cleanup()
        return self._durations


def peak_memory(stage: Stage, cfg: DictConfig, device: torch.device, steps: int) -> dict:
    """Peak memory of `steps` iterations of `stage`, run alone (enough to reach an upper step)."""
    stage.steps = steps
    with tempfile.TemporaryDirectory() as folder, PeakMemory(device) as peak:
        trainer = trainer_for(cfg, device)
        trainer.config.checkpoint_last = False  # nothing resumes it
        trainer.fit(stage, Path(folder))
    return {"peak_gb": peak.gb, "added_gb": peak.added_gb}


def plain_batches(ctx: CellContext, n: int) -> list[tuple[torch.Tensor, list[str]]]:
    """The first n batches of the fine-tuning stream the harness's distill stage draws from."""
    batches = ctx.stream(ctx.data.finetune, ctx.cfg.finetune.batch_size, "finetune").iterate(0)
    return [(b["images"], b["captions"]) for b, _ in zip(batches, range(n))]


def plain_kwargs(ctx: CellContext) -> dict:
    """The distill settings of the context's config, as the hand-written loop takes them."""
    ft = ctx.cfg.finetune
    return dict(lr=ft.lr, warmup=ft.warmup_steps, weight_decay=ft.weight_decay, caption_dropout=ft.caption_dropout,
                gamma=ft.loss.min_snr_gamma, w_diffusion=ft.loss.diffusion, w_output=ft.loss.output_kd,
                w_feature=ft.loss.feature_kd, max_grad_norm=ctx.cfg.train.max_grad_norm)


def _bf16(ctx: CellContext) -> bool:
    """Whether the harness's loop runs this config under bf16 autocast (as Trainer decides)."""
    p = ctx.cfg.train.precision
    return p == "bf16" or (p == "auto" and ctx.device.type == "cuda")


class HandWrittenLoop:
    """The hand-written distillation loop (plain_loop.steps) on a fresh copy of the student,
    advanced a turn at a time; a step is timed from asking for it to its end."""

    def __init__(self, ctx: CellContext, batches, steps: int):
        if ctx.parts.prediction_type != "epsilon" or ctx.parts.vae is not None:
            raise ValueError("the hand-written loop is written for epsilon prediction in pixel space (the world model)")
        student = copy.deepcopy(ctx.student).requires_grad_(True)
        self.device, self.steps, self.done = ctx.device, steps, 0
        self._steps = plain.steps(student, ctx.teacher, ctx.parts.text_encoder, ctx.parts.tokenizer, ctx.parts.noise_scheduler,
                                  batches, steps, lambda step: torch.Generator().manual_seed(step), ctx.kept,
                                  bf16=_bf16(ctx), **plain_kwargs(ctx))

    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def advance(self, n: int) -> list[float]:
        out = []
        for _ in range(min(n, self.steps - self.done)):
            sync(self.device)
            t0 = time.perf_counter()
            next(self._steps)
            sync(self.device)
            out.append(time.perf_counter() - t0)
            self.done += 1
        if self.finished:
            self._steps.close()
        return out


def step_flops(stage: Stage, optimizer: str, device: torch.device, generators: list[torch.Generator]) -> float:
    """Mean FLOPs of one iteration of `optimizer`'s loss in `stage` (forward(s) and backward)
    over the given iterations' random generators (a sampled x_t runs as many sampler steps as
    its generator draws). One uncounted iteration first, so caches (the text encoder's) are as
    warm as in a timed window."""
    iterators = {name: s.iterate(0) for name, s in stage.streams().items()}

    def next_batch(name):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(iterators[name]).items()}

    def one(generator):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = stage.loss(optimizer, next_batch, generator)
        loss.backward()

    one(torch.Generator().manual_seed(0))  # warm-up, uncounted
    counts = [count_flops(lambda g=g: one(g)) for g in generators]
    for module in stage.modules().values():
        module.zero_grad(set_to_none=True)
    return sum(counts) / len(counts)
