"""What a method works with: the frozen teacher, the pruned student, the data, the concepts,
and the lower-level loss every method shares."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from harness import concepts as concept_registry
from harness.concepts import Concept
from harness.data import BatchStream, DataSets, build_data
from harness import distributed
from harness.distributed import batch_draw
from harness.losses import distillation_loss
from harness.models import DiffusionParts, build_parts
from harness.method import get_method
from harness.pruning import PruneReport, count_macs_params, load_pruned, prune_unet, save_pruned

log = logging.getLogger("harness")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{distributed.world().local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class CellContext:
    cfg: DictConfig
    folder: Path
    device: torch.device
    parts: DiffusionParts  # the teacher's parts; parts.unet is the frozen teacher UNet
    student: nn.Module
    prune_report: PruneReport
    data: DataSets
    erase: list[Concept]
    retain: list[Concept]
    # Runs (or finds finished) the cell for a config derived from this one; returns its folder.
    require_cell: Callable[[DictConfig], Path]
    kept: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def teacher(self) -> nn.Module:
        return self.parts.unet

    def stream(self, dataset, batch_size: int, name: str) -> BatchStream:
        """A batch stream seeded by the cell seed and the stream's name."""
        seed = self.cfg.seed * 7_919 + sum(ord(c) for c in name)
        return BatchStream(dataset, batch_size, seed, self.cfg.runtime.num_workers)

    def frozen_copy(self, module: nn.Module) -> nn.Module:
        frozen = copy.deepcopy(module).requires_grad_(False)
        return frozen.eval()

    def captions_with_dropout(self, captions: list[str], generator: torch.Generator) -> list[str]:
        """Replace captions by "" with probability finetune.caption_dropout (CFG training)."""
        p = self.cfg.finetune.caption_dropout
        if not p:
            return list(captions)
        drop = batch_draw(lambda m: torch.rand(m, generator=generator), len(captions)) < p
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    def lower_loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        """L_ft: the fine-tuning (distillation) loss of `model` on a fine-tuning batch."""
        x0 = self.parts.encode_images(batch["images"], generator)
        cond = self.parts.encode_prompts(self.captions_with_dropout(batch["captions"], generator))
        return distillation_loss(
            model, self.teacher, self.parts.noise_scheduler, x0, cond, generator,
            self.kept, self.cfg.finetune.loss, self.parts.prediction_type,
        )

    def load_student(self, folder: Path) -> None:
        """Replace the student by the finished student of another cell (e.g. stage 1)."""
        unet, _ = load_pruned(folder / "student")
        self.student = unet.to(self.device)


def build_context(cfg: DictConfig, folder: Path, require_cell) -> CellContext:
    device = pick_device(cfg.runtime.device)
    parts = build_parts(cfg.model).to(device)
    parts.unet.requires_grad_(False).eval()
    erase, retain = concept_registry.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
    data = build_data(cfg.data, parts.resolution, erase)
    # Prune once per cell and keep the result: a resumed cell continues from the exact same
    # architecture and initial weights.
    init = folder / "pruned_init"
    student = None
    if not get_method(cfg.method.name).prunes:  # the teacher itself, evaluated as it is
        macs, params = count_macs_params(parts.unet)
        report = PruneReport(0.0, "none", params, params, macs, macs)
        student = copy.deepcopy(parts.unet)
    elif distributed.world().main:
        if init.with_suffix(".json").exists():
            student, report = load_pruned(init)
        else:
            student, report = prune_unet(parts.unet.cpu(), cfg.pruning.ratio, cfg.pruning.importance, cfg.seed)
            parts.unet.to(device)
            save_pruned(student, report, init)
    distributed.barrier()  # data-parallel: the other ranks start from what rank 0 wrote
    if student is None:
        student, report = load_pruned(init)
    if not get_method(cfg.method.name).prunes:
        log.info("the teacher UNet itself, unpruned: params %.3fM, MACs %.1fM", report.params_after / 1e6, report.macs_after / 1e6)
    else:
        log.info(
            "pruned UNet at ratio %.2f (%s): params %.3fM -> %.3fM, MACs %.1fM -> %.1fM",
            report.ratio, report.importance, report.params_before / 1e6, report.params_after / 1e6,
            report.macs_before / 1e6, report.macs_after / 1e6,
        )
    student = student.to(device).requires_grad_(True)
    kept = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in report.kept_channels.items()}
    return CellContext(cfg, folder, device, parts, student, report, data, erase, retain, require_cell, kept)
