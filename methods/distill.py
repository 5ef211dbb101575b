"""Distillation only: fine-tune the pruned student with the lower-level loss, no erasing.

    for step in 1..N:
        x0, c ← fine-tuning batch
        θ ← θ − α ∇θ L_ft(θ; x0, c)     # min-SNR diffusion + output KD + feature KD
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.method import BenchStep, Method, register
from harness.record import loss_label
from harness.trainer import Optim, Stage

METHOD_CONF = Path(__file__).resolve().parents[1] / "harness" / "conf" / "method"


def distill_config(cfg: DictConfig) -> DictConfig:
    """The config of the distill cell with the same settings: stage 1 of two-stage, and the
    reference (un-erased distilled) model of every erasing cell's evaluation."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    resolved.pop("tune", None)  # a study's block belongs to its trials, not to their references
    resolved["method"] = OmegaConf.to_container(OmegaConf.load(METHOD_CONF / "distill.yaml"))
    # recovery points within fine-tuning carry over (one distill cell serves both); later ones
    # belong to the erasing stage
    steps = resolved["eval"].get("recovery_steps") or []
    resolved["eval"]["recovery_steps"] = [s for s in steps if s <= resolved["finetune"]["steps"]]
    return OmegaConf.create(resolved)


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
    order = 10
    baseline = True  # the plain fine-tuning every other method's cost and quality is relative to

    @classmethod
    def label(cls, params):
        return "diffusion loss only" if loss_label(params) == "diffusion only" else "distill only"

    @classmethod
    def published(cls, params):
        if cls.label(params) != "distill only":  # the paper's row is diffusion + KD
            return None
        return {"clip_concept_erased": 34.34, "cp_erased": 0.0, "csd_erased": 100.0, "fid": 22.19, "clip_score": 29.44}

    @classmethod
    def bench_steps(cls, ks):
        return [BenchStep("distill", ("method=distill",), on_gpu=True)]

    def stages(self):
        yield FinetuneStage(self.ctx)
