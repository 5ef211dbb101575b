"""Two-stage: distillation fine-tuning, then an eraser (ESD or concept ablation).

    θ̂ ← distill(θ₀)                        # stage 1: the distill cell with the same settings,
                                            #   trained once and shared (content-addressed)
    F ← frozen copy of θ̂
    for step in 1..M:                       # stage 2
        x_t ← partial DDIM run of F on a concept prompt c
        θ ← θ − β ∇θ L_CU(θ; F, x_t, c)      # over the eraser's parameter subset
"""

from __future__ import annotations

from harness.cell import distill_config
from harness.method import Method, register
from methods import erasers


@register
class TwoStage(Method):
    name = "two_stage"
    sections = ("concepts", "eraser")

    @classmethod
    def validate(cls, cfg) -> None:
        erasers.validate(cfg)

    @classmethod
    def trained_steps(cls, cfg):
        return cfg.eraser.steps  # the eraser stage (stage 1 is the distill cell's)

    def stages(self):
        self.ctx.load_student(self.ctx.require_cell(distill_config(self.cfg)))
        frozen = self.ctx.frozen_copy(self.ctx.student)
        yield erasers.EraseStage(self.ctx, frozen, x_source=self.cfg.eraser.x_source)
