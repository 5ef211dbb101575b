"""Structural channel pruning of a diffusers UNet with torch-pruning, and a safe file format
for the pruned result.

- GroupNorm: each norm's channels are pruned as `num_groups` equal channel groups, so every
  group keeps the same size and the norm stays valid.
- Attention: q/k/v are tied by head count, so every head loses the same head dimensions.
- GEGLU: its projection holds two halves (value and gate) that are pruned alike.
- `conv_out` is never pruned: the student predicts in the teacher's output space.
- Saved as safetensors + JSON (base config, pruned shapes, kept block channels). Loading builds
  the dense model from the base config, shrinks each tensor to its saved shape and loads the
  weights: no pickled code, bit-identical outputs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.activations import GEGLU
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from safetensors.torch import load_file, save_file
from torch import nn

from harness.errors import ConfigError
from harness.files import write_atomic, write_via
from harness.schema import IMPORTANCES
from harness.student_loader import build_pruned_unet, sync_module_attributes
# torch-pruning traces the UNet with gradients: at SD 2.1's own 64 x 64 latents that kept over
# 21 GB alive and was killed on a 24 GB machine. The dependency graph and magnitude or random
# importance do not depend on the latent size (tests/test_pruning.py: the same student), so
# those trace a small latent; Taylor importance scores gradients of a loss at the traced size
# and traces the UNet's own size. MACs are always counted at the UNet's own size.
TRACE_SIZE = 8


@dataclass
class PruneReport:
    ratio: float
    importance: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    # For every hooked UNet block (see `feature_blocks`), the teacher channels the student kept:
    # feature distillation compares the student's block output with these teacher channels.
    kept_channels: dict[str, list[int]] = field(default_factory=dict)


def feature_blocks(unet: UNet2DConditionModel) -> dict[str, nn.Module]:
    """The UNet blocks whose outputs feature KD matches: every down block, the mid block and
    every up block (9 blocks for SD 2.1)."""
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return blocks


def example_inputs(unet: UNet2DConditionModel, batch: int = 2, seq: int = 8, size: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = size or unet.config.sample_size
    device = next(unet.parameters()).device
    return {
        "sample": torch.randn(batch, unet.config.in_channels, size, size, generator=g).to(device),
        "timestep": torch.linspace(10, 900, batch).long().to(device),
        "encoder_hidden_states": torch.randn(batch, seq, unet.config.cross_attention_dim, generator=g).to(device),
    }


def _block_output_channels(unet, inputs) -> dict[str, int]:
    channels, hooks = {}, []
    for name, block in feature_blocks(unet).items():
        def hook(_m, _i, out, name=name):
            channels[name] = (out[0] if isinstance(out, tuple) else out).shape[1]
        hooks.append(block.register_forward_hook(hook))
    with torch.no_grad():
        unet(**inputs)
    for h in hooks:
        h.remove()
    return channels


def _reference_convs(unet, out_channels: dict[str, int]) -> dict[str, nn.Conv2d]:
    """Per block, a conv whose output channels ARE the block's output channels (residual adds tie
    them into one pruning group): the last conv registered in the block with that width."""
    refs = {}
    for name, block in feature_blocks(unet).items():
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.out_channels == out_channels[name]]
        refs[name] = convs[-1]
    return refs


def count_macs_params(unet: nn.Module) -> tuple[int, int]:
    """Multiply-accumulates of one image's UNet forward (conv and linear layers, as
    torch-pruning counts them) and the parameter count."""
    import torch_pruning as tp

    unet.set_attn_processor(AttnProcessor())
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its keyword-input notice is noise here
            macs, params = tp.utils.count_ops_and_params(unet, example_inputs(unet, batch=1))
    finally:
        unet.set_attn_processor(AttnProcessor2_0())
    return int(macs), int(params)


def prune_unet(teacher: UNet2DConditionModel, ratio: float, importance: str = "magnitude", seed: int = 0,
               trace_size: int | None = None):
    """A pruned copy of `teacher`'s UNet and a report of what was removed. `trace_size`: the
    latent size the pruning traces (default: TRACE_SIZE, or the UNet's own for Taylor)."""
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ConfigError("pruning.ratio", ratio, "a number strictly between 0 and 1")
    if importance not in IMPORTANCES:
        raise ConfigError("pruning.importance", importance, f"one of {', '.join(IMPORTANCES)}")
    macs_before, params_before = count_macs_params(teacher)
    unet = copy.deepcopy(teacher)
    unet.requires_grad_(True)
    # The SDPA processor can break dependency tracing: trace with the plain one.
    unet.set_attn_processor(AttnProcessor())
    if trace_size is None:
        trace_size = unet.config.sample_size if importance == "taylor" else min(TRACE_SIZE, unet.config.sample_size)
    inputs = example_inputs(unet, size=trace_size)
    out_channels = _block_output_channels(unet, inputs)
    refs = _reference_convs(unet, out_channels)
    num_heads = {}
    for m in unet.modules():
        if isinstance(m, Attention):
            for lin in (m.to_q, m.to_k, m.to_v):
                num_heads[lin] = m.heads
    groups = {m.proj: 2 for m in unet.modules() if isinstance(m, GEGLU)}
    groups.update({m: m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)})
    torch.manual_seed(seed)
    if importance == "magnitude":
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    elif importance == "random":
        imp = tp.importance.RandomImportance()
    else:
        imp = tp.importance.GroupTaylorImportance()
    pruner = tp.pruner.MetaPruner(
        unet,
        inputs,
        importance=imp,
        pruning_ratio=ratio,
        ignored_layers=[unet.conv_out],
        num_heads=num_heads,
        out_channel_groups=groups,
        forward_fn=lambda m, x: m(**x).sample,
    )
    if importance == "taylor":  # first-order importance needs gradients of a denoising loss
        noise = torch.randn_like(inputs["sample"], generator=None)
        ((unet(**inputs).sample - noise) ** 2).mean().backward()
    removed: dict[str, list[int]] = {name: [] for name in refs}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            for name, ref in refs.items():
                if dep.target.module is ref and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    removed[name] = [int(i) for i in idxs]
        group.prune()
    unet.zero_grad(set_to_none=True)
    sync_module_attributes(unet)
    unet.set_attn_processor(AttnProcessor2_0())
    kept = {n: sorted(set(range(out_channels[n])) - set(removed[n])) for n in refs}
    macs_after, params_after = count_macs_params(unet)
    report = PruneReport(ratio, importance, params_before, params_after, macs_before, macs_after, kept)
    return unet, report


def save_pruned(unet: UNet2DConditionModel, report: PruneReport, path: Path) -> None:
    """`path`.safetensors (weights) + `path`.json (architecture). Both written atomically."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    meta = {
        "base_config": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "report": asdict(report),
    }
    write_via(path.with_suffix(".safetensors"), lambda tmp: save_file(state, str(tmp)))
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1, default=list))


def load_pruned(path: Path) -> tuple[UNet2DConditionModel, PruneReport]:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    unet = build_pruned_unet(meta["base_config"], meta["shapes"], load_file(str(path.with_suffix(".safetensors"))))
    return unet, PruneReport(**meta["report"])
