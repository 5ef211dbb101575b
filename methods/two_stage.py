"""Two-stage: distillation fine-tuning, then an eraser (ESD or concept ablation).

    θ̂ ← distill(θ₀)                        # stage 1: the distill cell with the same settings,
                                            #   trained once and shared (content-addressed)
    F ← frozen copy of θ̂
    for step in 1..M:                       # stage 2
        x_t ← partial DDIM run of F on a concept prompt c
        θ ← θ − β ∇θ L_CU(θ; F, x_t, c)      # over the eraser's parameter subset
"""

from __future__ import annotations

from omegaconf import OmegaConf

from harness.cell import METHOD_CONF
from harness.method import Method, register
from methods import erasers


@register
class TwoStage(Method):
    name = "two_stage"
    sections = ("concepts", "eraser")

    @classmethod
    def validate(cls, cfg) -> None:
        erasers.validate(cfg)

    def stage_one_config(self):
        """The config of the distill cell this cell starts from."""
        cfg = OmegaConf.to_container(self.cfg, resolve=True)
        cfg["method"] = OmegaConf.to_container(OmegaConf.load(METHOD_CONF / "distill.yaml"))
        return OmegaConf.create(cfg)

    def stages(self):
        self.ctx.load_student(self.ctx.require_cell(self.stage_one_config()))
        frozen = self.ctx.frozen_copy(self.ctx.student)
        yield erasers.EraseStage(self.ctx, frozen, x_source=self.cfg.eraser.x_source)
