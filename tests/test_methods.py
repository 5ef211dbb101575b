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

pytestmark = pytest.mark.numerics  # thresholds on trained losses: run again with AVX2 kernels in CI

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


def test_penalty_outer_step_suppresses_through_upper_params_only(context_for, tmp_path):
    """method.upper_params holds for the penalty solver too: with λ = 0 its outer step is
    ∇L_CU alone, which must leave every parameter outside cross-attention where it was (the
    solver once stepped all of them, ignoring the subset); with `full` they all move."""
    moved = {}
    for subset in ("xattn", "full"):
        ctx = context_for([*BILEVEL, "method.solver=penalty", "method.K=1", "method.lam=0", "method.upper_lr=1e-3",
                           f"method.upper_params={subset}"])
        stage = PenaltyStage(ctx, Eraser(ctx, ctx.teacher, "images"))
        before = {n: p.detach().clone() for n, p in ctx.student.named_parameters()}
        fit(stage, tmp_path / subset, 3)
        changed = {n for n, p in ctx.student.named_parameters() if not torch.equal(p, before[n])}
        moved[subset] = changed
        inner_changed = any(not torch.equal(p, before[n]) for n, p in stage.inner.named_parameters())
        assert inner_changed  # ϑ trains on L_ft every iteration whatever the subset
    xattn = {n for n in before if ".attn2." in f".{n}"}
    assert moved["xattn"] and moved["xattn"] <= xattn, sorted(moved["xattn"] - xattn)[:5]
    assert moved["full"] - xattn  # the same step with `full` moves the rest too


def test_layers_linear_conv_leaves_norms_out(context_for):
    """ESD's script trains Linear/Conv parameters only: ESD-u with `layers=linear_conv` has no
    norm parameters; with `all` it has them."""
    ctx = context_for(FIXED)
    names = {id(p): n for n, p in ctx.student.named_parameters()}
    norms = {n for m, mod in ctx.student.named_modules() if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))
             for n in (f"{m}.weight", f"{m}.bias")}
    every = {names[id(p)] for p in parameter_subset(ctx.student, "noxattn", "all")}
    lc = {names[id(p)] for p in parameter_subset(ctx.student, "noxattn", "linear_conv")}
    assert every & norms and not lc & norms and lc < every
    assert {names[id(p)] for p in parameter_subset(ctx.student, "xattn", "linear_conv")} == \
        {names[id(p)] for p in parameter_subset(ctx.student, "xattn", "all")}  # cross-attention is Linear only


def test_upper_warmup_counts_the_optimizers_own_steps(tmp_path):
    """The authors warm the upper optimizer up over 250 of its own steps. An optimizer that
    steps every K-th iteration reaches its full lr after K × warmup iterations, and a resumed
    run continues the count where it stopped."""
    from harness.trainer import Optim, Stage

    class Every3(Stage):
        name, steps = "toy", 12

        def __init__(self):
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.lrs = []

        def modules(self):
            return {"m": torch.nn.ParameterList([self.w])}

        def optimizers(self):
            return {"up": Optim([self.w], lr=1.0, warmup_steps=4)}

        def streams(self):
            return {}

        def updates(self, step):
            return ["up"] if (step + 1) % 3 == 0 else []

        def loss(self, optimizer, next_batch, generator):
            return self.w.sum(), {}

    def run(stage, steps, folder):
        stage.steps = steps
        trainer = Trainer(TrainConfig(checkpoint_every=3, max_grad_norm=0, progress=False), torch.device("cpu"))
        original = torch.optim.AdamW.step

        def spy(opt, *a, **k):
            stage.lrs.append(opt.param_groups[0]["lr"])
            return original(opt, *a, **k)

        torch.optim.AdamW.step = spy
        try:
            trainer.fit(stage, folder)
        finally:
            torch.optim.AdamW.step = original

    whole = Every3()
    run(whole, 12, tmp_path / "a")
    assert whole.lrs == [0.25, 0.5, 0.75, 1.0]  # 4 upper steps over 12 iterations
    resumed = Every3()
    run(resumed, 6, tmp_path / "b")
    run(resumed, 12, tmp_path / "b")
    assert resumed.lrs == whole.lrs
