"""Concept-suppression objectives (the upper level L_CU) and the eraser stage of two-stage.

- ESD (Gandikota et al. 2023): regress the model's prediction for the concept prompt onto
  negative guidance from a frozen model: F(x_t, ∅) − η (F(x_t, c) − F(x_t, ∅)).
- Concept ablation (Kumari et al. 2023, model-based): regress it onto the frozen model's
  prediction for an anchor prompt ("a painting" for an artist; the plain caption in the world).

x_t comes either from forward-noising concept images (`images`, the authors' bilevel code) or
from partially running a DDIM sampler on the prompt (`sampler`, ESD's recipe): the frozen
model's (`eraser.sampler_model=frozen`, this harness's default: the x_t distribution stays
fixed while the student changes) or the model being trained (`trained`, as ESD's and the
authors' scripts do), at `eraser.sampler_guidance` (ESD: 3).

`eraser.layers`: `all` parameters of the chosen subset, or only those of Linear and Conv
layers (`linear_conv`, as ESD's script selects them: its ESD-u leaves norm layers alone)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.concepts import Concept
from harness.errors import ConfigError
from harness.method import Work, register_eraser_keys
from harness.models.subsets import parameter_subset  # noqa: F401 - the stages' and tests' name for it
from harness.losses import ablation_target, esd_target, noisy_inputs, weighted_mse
from harness.sampling import sample
from harness.trainer import Optim, Stage

ERASERS = ("esd", "concept_ablation")
PARAM_SUBSETS = {
    "esd": ("xattn", "noxattn", "full"),
    "concept_ablation": ("xattn", "full"),
}
X_SOURCES = ("images", "sampler")
SAMPLER_MODELS = ("frozen", "trained")
LAYERS = ("all", "linear_conv")


def keys() -> dict[str, dict]:
    """Each eraser's config keys (`eraser.<key>`) with their types and ranges (harness/schema.py)."""
    from harness import schema as S

    def common(name: str) -> dict:
        return {
            "params": S.choice(*PARAM_SUBSETS[name]),
            "lr": S.positive(),
            "steps": S.count(),  # two-stage eraser iterations
            "batch_size": S.positive_int(),
            "x_source": S.choice(*X_SOURCES),
            "sampler_steps": S.positive_int(),
            "sampler_guidance": S.positive(),
            "sampler_model": S.choice(*SAMPLER_MODELS),
            "layers": S.choice(*LAYERS),
        }

    return {"esd": {"eta": S.non_negative(), **common("esd")}, "concept_ablation": common("concept_ablation")}


register_eraser_keys(keys)


def validate(cfg) -> None:
    """The eraser's keys are checked by their declarations (`keys`); nothing spans keys yet."""
    if cfg.eraser.name not in ERASERS:
        raise ConfigError("eraser", cfg.eraser.name, f"one of {', '.join(ERASERS)}")


def eraser_work(cfg, stage: str, steps: int, batch: int, frozen_is_teacher: bool, subset: str, x_source: str) -> list[Work]:
    """What `steps` eraser iterations of `batch` images compute (Eraser.loss): the student's
    forward and a backward reaching `subset`; the frozen model's target (ESD: conditional and
    unconditional forwards; concept ablation: the anchor's); with x_t from the sampler, on
    average half of `sampler_steps` guided steps (the stop is drawn from 1..steps-1) of the
    sampling model; with x_t from images, their VAE encode."""
    e = cfg.eraser
    frozen = 2.0 if e.name == "esd" else 1.0
    sampler = 0.0
    if x_source == "sampler":
        sampler = e.sampler_steps / 2 * (1.0 if e.sampler_guidance == 1.0 else 2.0)
    on_teacher = frozen_is_teacher and e.sampler_model == "frozen"
    student = (0.0 if frozen_is_teacher else frozen) + (0.0 if on_teacher else sampler)
    teacher = (frozen if frozen_is_teacher else 0.0) + (sampler if on_teacher else 0.0)
    return [Work(stage, steps, batch, trained=1.0, student=student, teacher=teacher,
                 encode=1.0 if x_source == "images" else 0.0, subset=subset)]


def concept_of(caption: str, concepts: list[Concept]) -> Concept:
    return next((c for c in concepts if c.phrase and c.phrase in caption), concepts[0])


class Eraser:
    """The suppression loss of one eraser config against a frozen reference model."""

    def __init__(self, ctx, frozen: nn.Module, x_source: str):
        if x_source not in X_SOURCES:
            raise ConfigError("x_source", x_source, f"one of {', '.join(X_SOURCES)}")
        self.ctx, self.frozen, self.x_source, self.cfg = ctx, frozen, x_source, ctx.cfg.eraser

    def _noisy(self, batch: dict, generator: torch.Generator, student):
        parts = self.ctx.parts
        if self.x_source == "images":
            x0 = parts.encode_images(batch["images"], generator)
            x_t, t, _ = noisy_inputs(parts.noise_scheduler, x0, generator)
            return x_t, t
        prompts = self._reference_prompts(batch["captions"])
        steps = self.cfg.sampler_steps
        stop = int(torch.randint(1, steps, (1,), generator=generator)) if steps > 1 else 1
        model = self.frozen if self.cfg.sampler_model == "frozen" else student
        return sample(model, parts, prompts, steps, self.cfg.sampler_guidance, generator, stop_after=stop)

    def _reference_prompts(self, captions: list[str]) -> list[str]:
        if self.cfg.name == "concept_ablation":  # CA generates from the anchor prompt
            return [concept_of(c, self.ctx.erase).ablate(c) for c in captions]
        return list(captions)

    def loss(self, student: nn.Module, batch: dict, generator: torch.Generator):
        parts = self.ctx.parts
        captions = batch["captions"]
        x_t, t = self._noisy(batch, generator, student)
        cond = parts.encode_prompts(captions)
        if self.cfg.name == "esd":
            uncond = parts.encode_prompts([""] * len(captions))
            target = esd_target(self.frozen, x_t, t, cond, uncond, self.cfg.eta)
        else:
            anchors = [concept_of(c, self.ctx.erase).ablate(c) for c in captions]
            target = ablation_target(self.frozen, x_t, t, parts.encode_prompts(anchors))
        loss = weighted_mse(student(x_t, t, cond).sample, target)
        return loss, {}


class EraseStage(Stage):
    """Two-stage's second stage: erase the concepts from the fine-tuned student."""

    name = "erase"

    def __init__(self, ctx, frozen: nn.Module, x_source: str):
        self.ctx, self.steps = ctx, ctx.cfg.eraser.steps
        self.eraser = Eraser(ctx, frozen, x_source)
        self.trainable = parameter_subset(ctx.student, ctx.cfg.eraser.params, ctx.cfg.eraser.layers)
        for p in ctx.student.parameters():
            p.requires_grad_(False)
        for p in self.trainable:
            p.requires_grad_(True)

    def modules(self):
        return {"student": self.ctx.student}

    def optimizers(self):
        return {"erase": Optim(self.trainable, self.ctx.cfg.eraser.lr)}

    def streams(self):
        return {"concept": self.ctx.stream(self.ctx.data.concept, self.ctx.cfg.eraser.batch_size, "concept")}

    def loss(self, optimizer: str, next_batch: Callable, generator):
        return self.eraser.loss(self.ctx.student, next_batch("concept"), generator)
