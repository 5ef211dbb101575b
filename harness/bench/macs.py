"""python -m harness.bench.macs: what a pruning ratio leaves of a UNet, in MACs and parameters.

    python -m harness.bench.macs --arch sd21 --ratios 0.1,0.2,0.3,0.4   # SD 2.1's UNet (random weights)
    python -m harness.bench.macs --arch world --ratios 0.05,0.1,0.15,0.2

`pruning.ratio` is torch-pruning's channel ratio, not a MACs budget: the paper's students keep
about 55% and 80% of SD 2.1's MACs (APTP), and the ratio that lands there is measured here.
The UNet is built from its published config with random weights: MACs and parameters depend
on the layout alone, and magnitude importance on random weights prunes as many channels per
layer as on trained ones (torch-pruning's ratio is per layer), so the figures hold for the
real checkpoint. One image's forward (`harness.pruning.count_macs_params`: SD 2.1 at 64 × 64
latents, 512 px). Writes <dest>/macs-<arch>.json and prints a table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ARCHS = ("sd21", "toy", "world")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m harness.bench.macs", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sd21", choices=ARCHS, help="sd21: SD 2.1's UNet; toy: its layout at toy size; world: the Concept World's UNet")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4", help="comma-separated pruning ratios, each strictly between 0 and 1")
    p.add_argument("--importance", default="magnitude", help="pruning.importance (magnitude | random | taylor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dest", default="outputs/bench", help="folder for macs-<arch>.json")
    return p.parse_args(argv)


def unet_for(arch: str):
    """The arch's UNet: built from its config (sd21, toy) or the world's shipped teacher."""
    if arch == "world":
        from harness.compose import compose_config
        from harness.models import build_parts

        return build_parts(compose_config([]).model).unet
    from diffusers import UNet2DConditionModel

    import torch

    from harness.bench.gpu import ARCHS as LAYOUTS

    torch.manual_seed(0)
    return UNet2DConditionModel(**LAYOUTS[arch][0])




def measure(arch: str, ratios: list[float], importance: str = "magnitude", seed: int = 0, say=print) -> dict:
    from harness.pruning import TRACE_SIZE, count_macs_params, prune_unet

    teacher = unet_for(arch).requires_grad_(False).eval()
    size = teacher.config.sample_size
    macs, params = count_macs_params(teacher)
    rows = []
    for ratio in ratios:
        t0 = time.perf_counter()
        student, report = prune_unet(teacher, ratio, importance, seed)  # traced small (harness.pruning.TRACE_SIZE)
        macs_after, params_after = report.macs_after, report.params_after
        rows.append({"ratio": ratio, "macs": macs_after, "params": params_after,
                     "macs_share": macs_after / macs, "params_share": params_after / params,
                     "prune_s": time.perf_counter() - t0})
        del student
        say(f"  ratio {ratio:.2f}: {rows[-1]['macs_share']:.1%} of MACs, {rows[-1]['params_share']:.1%} of parameters "
            f"({rows[-1]['prune_s']:.0f} s)")
    return {"arch": arch, "importance": importance, "seed": seed, "latent_size": size, "trace_size": size if importance == "taylor" else min(TRACE_SIZE, size),
            "macs": macs, "params": params, "ratios": rows}


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        ratios = [float(r) for r in args.ratios.split(",") if r]
    except ValueError:
        ratios = []
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        print(f"error: --ratios={args.ratios} is not accepted: comma-separated numbers strictly between 0 and 1", file=sys.stderr)
        return 2
    from harness.schema import IMPORTANCES

    if args.importance not in IMPORTANCES:
        print(f"error: --importance={args.importance} is not accepted: one of {', '.join(IMPORTANCES)}", file=sys.stderr)
        return 2
    print(f"{args.arch} UNet, {args.importance} importance, seed {args.seed}:")
    result = measure(args.arch, ratios, args.importance, args.seed)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    from harness.files import write_atomic

    write_atomic(dest / f"macs-{args.arch}.json", json.dumps(result, indent=2) + "\n")
    print(f"unpruned: {result['macs'] / 1e6:,.1f} M MACs, {result['params'] / 1e6:,.1f} M parameters")
    print("| ratio | MACs kept | parameters kept |\n|---:|---:|---:|")
    for r in result["ratios"]:
        print(f"| {r['ratio']:.2f} | {r['macs_share']:.1%} | {r['params_share']:.1%} |")
    print(f"wrote {dest / f'macs-{args.arch}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
