"""Two-stage: distillation fine-tuning, then an eraser (ESD or concept ablation).

    θ̂ ← distill(θ₀)                        # stage 1: the distill cell with the same settings,
                                            #   trained once and shared (content-addressed)
    F ← frozen copy of θ̂
    for step in 1..M:                       # stage 2
        x_t ← partial DDIM run of F on a concept prompt c
        θ ← θ − β ∇θ L_CU(θ; F, x_t, c)      # over the eraser's parameter subset
"""

from __future__ import annotations

from harness.method import BenchStep, Method, register
from harness.record import plain
from methods import erasers
from methods.distill import distill_config


@register
class TwoStage(Method):
    name = "two_stage"
    sections = ("concepts", "eraser")
    order = 30
    continues_reference = True  # stage 1 is its reference cell, the distilled student
    batch_keys = ("eraser.batch_size",)

    @classmethod
    def label(cls, params):
        return f"two-stage + {plain(params.get('eraser.name'))}"

    @classmethod
    def published(cls, params):
        if plain(params.get("eraser.name")) == "esd":  # the paper's two-stage rows use ESD (and UCE, ConceptPrune)
            return {"clip_concept_erased": 30.78, "cp_erased": 84.0, "csd_erased": 61.45, "fid": 30.38, "clip_score": 29.02}
        return None

    @classmethod
    def reference(cls, cfg):
        return distill_config(cfg)

    @classmethod
    def validate(cls, cfg) -> None:
        erasers.validate(cfg)

    @classmethod
    def trained_steps(cls, cfg):
        return cfg.eraser.steps  # the eraser stage (stage 1 is the distill cell's)

    @classmethod
    def work(cls, cfg):
        # stage 1 is its reference cell's (planned as a cell of its own); the frozen model is
        # the distilled student
        return erasers.eraser_work(cfg, "erase", cfg.eraser.steps, cfg.eraser.batch_size, frozen_is_teacher=False,
                                   subset=cfg.eraser.params, x_source=cfg.eraser.x_source)  # EraseStage trains only `params`

    @classmethod
    def bench_steps(cls, ks):
        return [BenchStep(f"eraser {e}", ("method=two_stage", f"eraser={e}"), "erase") for e in erasers.ERASERS]

    def bench_stage(self):
        # stage 2 on the context's student as if it were the distilled one (stage 1 is timed as distill)
        return erasers.EraseStage(self.ctx, self.ctx.frozen_copy(self.ctx.student), x_source=self.cfg.eraser.x_source)

    def stages(self):
        self.ctx.load_student(self.ctx.require_cell(self.reference(self.cfg)))
        frozen = self.ctx.frozen_copy(self.ctx.student)
        yield erasers.EraseStage(self.ctx, frozen, x_source=self.cfg.eraser.x_source)
