"""Named parameter subsets of a UNet: where an eraser or an upper level acts (ESD-x:
cross-attention), and what the plan's cost model measures a backward pass over."""

from __future__ import annotations

from torch import nn

SUBSETS = ("full", "xattn", "noxattn")


def parameter_subset(unet: nn.Module, which: str, layers: str = "all") -> list[nn.Parameter]:
    """ESD-x trains cross-attention only (`attn2`), ESD-u everything else, `full` all;
    `layers=linear_conv` keeps only the parameters of Linear and Conv layers among them."""
    names = [n for n, _ in unet.named_parameters()]
    if layers == "linear_conv":
        owned = {f"{m}.{n}" if m else n for m, mod in unet.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))
                 for n, _ in mod.named_parameters(recurse=False)}
    else:
        owned = set(names)
    in_xattn = {n for n in names if ".attn2." in f".{n}"}
    keep = {"full": set(names), "xattn": in_xattn, "noxattn": set(names) - in_xattn}[which] & owned
    return [p for n, p in unet.named_parameters() if n in keep]
