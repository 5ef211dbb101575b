"""Distillation only: fine-tune the pruned student with the lower-level loss, no erasing.

    for step in 1..N:
        x0, c ← fine-tuning batch
        θ ← θ − α ∇θ L_ft(θ; x0, c)     # min-SNR diffusion + output KD + feature KD
"""

from __future__ import annotations

from harness.method import Method, register
from harness.trainer import Optim, Stage


class FinetuneStage(Stage):
    name = "finetune"

    def __init__(self, ctx):
        self.ctx, self.steps = ctx, ctx.cfg.finetune.steps

    def modules(self):
        return {"student": self.ctx.student}

    def optimizers(self):
        ft = self.ctx.cfg.finetune
        return {"lower": Optim(list(self.ctx.student.parameters()), ft.lr, ft.weight_decay, ft.warmup_steps)}

    def streams(self):
        return {"finetune": self.ctx.stream(self.ctx.data.finetune, self.ctx.cfg.finetune.batch_size, "finetune")}

    def loss(self, optimizer, next_batch, generator):
        return self.ctx.lower_loss(self.ctx.student, next_batch("finetune"), generator)


@register
class Distill(Method):
    name = "distill"
    erases = False

    def stages(self):
        yield FinetuneStage(self.ctx)
