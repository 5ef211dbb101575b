"""Every method trains through the shared loop, and its losses go down on a fixed batch."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.losses import esd_target, weighted_mse
from harness.method import REGISTRY, get_method, method_names
from harness.trainer import Trainer, TrainConfig
from methods.bilevel import AlternatingStage, PenaltyStage
from methods.distill import FinetuneStage
from methods.erasers import Eraser, EraseStage, parameter_subset

FIXED = ["data.finetune_size=4", "data.concept_size=4", "finetune.batch_size=4", "finetune.caption_dropout=0",
         "eraser.batch_size=4"]
BILEVEL = [*FIXED, "method=bilevel", "method.upper_batch_size=4"]


def fixed_loss(fn, seed=123):
    with torch.no_grad():
        return fn(torch.Generator().manual_seed(seed))[0].item()


class FixedBatchTrainer(Trainer):
    """Every iteration sees the same noise, timesteps and sampler draws: a fixed batch."""

    def generator(self, stage, step):
        return torch.Generator().manual_seed(123)


def fit(stage, tmp_path, steps):
    stage.steps = steps
    FixedBatchTrainer(TrainConfig(seed=0, checkpoint_every=10_000, progress=False), torch.device("cpu")).fit(stage, tmp_path / stage.name)


def first_batch(ctx, dataset, n=4):
    items = [dataset[i] for i in range(n)]
    return {"images": torch.stack([i["image"] for i in items]), "captions": [i["caption"] for i in items]}


def test_registry_discovers_every_method_file():
    assert method_names() == ["bilevel", "distill", "teacher", "two_stage"]
    assert all(REGISTRY[n].name == n for n in method_names())


def test_distill_lower_loss_goes_down(context_for, tmp_path):
    ctx = context_for(FIXED)
    batch = first_batch(ctx, ctx.data.finetune)
    before = fixed_loss(lambda g: ctx.lower_loss(ctx.student, batch, g))
    fit(FinetuneStage(ctx), tmp_path, 40)
    after = fixed_loss(lambda g: ctx.lower_loss(ctx.student, batch, g))
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("eraser", ["esd", "concept_ablation"])
def test_two_stage_eraser_loss_goes_down(context_for, tmp_path, eraser):
    ctx = context_for([*FIXED, "method=two_stage", f"eraser={eraser}", "eraser.params=full", "eraser.lr=2e-4"])
    stage = EraseStage(ctx, ctx.frozen_copy(ctx.student), x_source="sampler")
    batch = first_batch(ctx, ctx.data.concept)
    before = fixed_loss(lambda g: stage.eraser.loss(ctx.student, batch, g))
    fit(stage, tmp_path, 30)
    after = fixed_loss(lambda g: stage.eraser.loss(ctx.student, batch, g))
    assert after < 0.8 * before, (before, after)


def test_esd_x_trains_cross_attention_only(context_for):
    ctx = context_for(FIXED)
    xattn = parameter_subset(ctx.student, "xattn")
    rest = parameter_subset(ctx.student, "noxattn")
    names = {id(p): n for n, p in ctx.student.named_parameters()}
    assert xattn and all(".attn2." in f".{names[id(p)]}" for p in xattn)
    assert len(xattn) + len(rest) == len(list(ctx.student.parameters()))


@pytest.mark.parametrize("solver", ["alternating", "penalty"])
def test_bilevel_losses_go_down(context_for, tmp_path, solver):
    ctx = context_for([*BILEVEL, f"method.solver={solver}", "method.K=2", "method.upper_lr=1e-3"])
    eraser = Eraser(ctx, ctx.teacher, "images")
    stage = (PenaltyStage if solver == "penalty" else AlternatingStage)(ctx, eraser)
    ft, concept = first_batch(ctx, ctx.data.finetune), first_batch(ctx, ctx.data.concept)
    lower = lambda g: ctx.lower_loss(ctx.student, ft, g)  # noqa: E731
    upper = lambda g: eraser.loss(ctx.student, concept, g)  # noqa: E731
    before = fixed_loss(lower), fixed_loss(upper)
    fit(stage, tmp_path, 40)
    after = fixed_loss(lower), fixed_loss(upper)
    assert after[0] < 0.8 * before[0], (before, after)
    if solver == "alternating":
        assert after[1] < before[1], (before, after)
    else:  # the outer step descends L_CU + λ L_ft, not each term
        lam = ctx.cfg.method.lam
        assert after[1] + lam * after[0] < before[1] + lam * before[0], (before, after)


def test_bilevel_upper_step_moves_concept_prediction_toward_esd_target(context_for):
    """The upper step acts on the concept: the student's prediction for concept prompts moves
    toward ESD's target, and moves more than its prediction for neutral prompts does."""
    ctx = context_for([*BILEVEL, "method.K=1", "method.upper_lr=3e-3", "method.upper_params=xattn"])
    ctx.student = copy.deepcopy(ctx.teacher).requires_grad_(True)  # no pruning damage: only concept error
    stage = AlternatingStage(ctx, Eraser(ctx, ctx.teacher, "images"))
    parts = ctx.parts
    concept = first_batch(ctx, ctx.data.concept)
    neutral = first_batch(ctx, ctx.data.finetune)
    t = torch.full((4,), 600)

    def inputs(batch):
        g = torch.Generator().manual_seed(7)
        x0 = parts.encode_images(batch["images"], g)
        x_t = parts.noise_scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t)
        return x_t, parts.encode_prompts(batch["captions"]), parts.encode_prompts([""] * len(x0))

    @torch.no_grad()
    def prediction(batch):
        x_t, cond, _ = inputs(batch)
        return ctx.student(x_t, t, cond).sample

    x_t, cond, uncond = inputs(concept)
    target = esd_target(ctx.teacher, x_t, t, cond, uncond, ctx.cfg.eraser.eta)
    before = prediction(concept), prediction(neutral)
    opt = torch.optim.AdamW(stage.upper_params, lr=ctx.cfg.method.upper_lr)
    for step in range(25):
        opt.zero_grad()
        loss, _ = stage.loss("upper", lambda _name: concept, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
    after = prediction(concept), prediction(neutral)
    gain = 1 - weighted_mse(after[0], target).item() / weighted_mse(before[0], target).item()
    drift_concept, drift_neutral = weighted_mse(after[0], before[0]).item(), weighted_mse(after[1], before[1]).item()
    assert gain > 0.3, gain
    assert drift_concept > 2 * drift_neutral, (drift_concept, drift_neutral)


def test_penalty_inner_copy_is_separate(context_for):
    ctx = context_for([*BILEVEL, "method.solver=penalty"])
    stage = PenaltyStage(ctx, Eraser(ctx, ctx.teacher, "images"))
    assert set(stage.modules()) == {"student", "inner"}
    p_student, p_inner = next(ctx.student.parameters()), next(stage.inner.parameters())
    assert p_student is not p_inner and torch.equal(p_student, p_inner)


def test_unknown_method_names_the_accepted_ones():
    with pytest.raises(ValueError, match="method='nope'.*bilevel, distill, teacher, two_stage"):
        get_method("nope")
