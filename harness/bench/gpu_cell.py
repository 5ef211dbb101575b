"""python -m harness.bench.gpu_cell: one cell of `sweep=paper_sd21` at SD 2.1's size, with no
download, measured against what `--plan` predicted for it.

    python -m harness.bench.gpu_cell                      # plain distillation, ratio 0.25, 300 steps on cuda
    python -m harness.bench.gpu_cell --method bilevel method.solver=alternating method.K=10
    python -m harness.bench.gpu_cell --arch toy --device cpu --steps 4   # the tests' size

The inputs are written first, in SD 2.1's published layout with random weights (step time and
memory do not depend on weight values): the pipeline folder (harness/models/random_pipeline.py),
COCO 2017's layout with random 512² images, and one image folder per artist. The cell then
runs as a user runs it, `python -m harness sweep=paper_sd21 ...` in a fresh process, with the
preset's settings except: the steps and batch given here (the preset's global batch 64 is 16
per GPU on 4 GPUs; one GPU here runs one of them), and evaluation at the model level
(`eval.backbone=none`: the metric backbones are downloads too; the sample grid, held-out MSE
and guidance alignment still sample with PNDM at 50 steps).

Writes <dest>/gpu-cell-<arch>.json and .md: the plan's estimate (its calibration named), the
measured times and peak memory, and their ratios."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTISTS = ("van_gogh", "monet", "picasso")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m harness.bench.gpu_cell", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="more Hydra overrides of the cell")
    p.add_argument("--arch", default="sd21", choices=("sd21", "toy"), help="the pipeline's size (toy: the tests')")
    p.add_argument("--device", default="cuda")
    p.add_argument("--method", default=None, help="default: the baseline method (plain distillation)")
    p.add_argument("--ratio", type=float, default=0.25, help="pruning ratio (the preset's: 0.1, 0.25)")
    p.add_argument("--steps", type=int, default=300, help="lower-level iterations")
    p.add_argument("--batch", type=int, default=16, help="the batch of one GPU (the paper's: 16 per GPU)")
    p.add_argument("--images", type=int, default=128, help="COCO train images written (val: a quarter)")
    p.add_argument("--dest", default="outputs/bench")
    p.add_argument("--work", default=None, help="where the inputs and the cell go (default: a private temporary folder)")
    return p.parse_args(argv)


def layouts(arch: str) -> tuple[dict, dict, dict, int, int]:
    """(unet, vae, text, max_length, resolution) configs of `arch`."""
    from harness.bench.gpu import TOY_TEXT, TOY_UNET
    from harness.models.sd21 import SD21_BASE_UNET, SD21_TEXT, SD21_VAE

    if arch == "sd21":
        return SD21_BASE_UNET, SD21_VAE, {k: v for k, v in SD21_TEXT.items() if k != "max_position_embeddings"}, 77, 512
    vae = dict(SD21_VAE, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1, sample_size=16)
    text = {k: v for k, v in TOY_TEXT.items() if k != "max_position_embeddings"}
    return TOY_UNET, vae, text, 77, TOY_UNET["sample_size"] * 2


def write_inputs(work: Path, arch: str, images: int, device: str, say) -> tuple[list[str], dict]:
    """The pipeline, COCO and artist folders under `work`; the overrides naming them, and the
    seconds each took."""
    import numpy as np
    from PIL import Image

    from harness.data.real import write_coco
    from harness.models.random_pipeline import write_pipeline

    unet, vae, text, max_length, resolution = layouts(arch)
    seconds = {}
    t0 = time.perf_counter()
    write_pipeline(work / "sd21", unet, vae, text, max_length, device="cuda" if device.startswith("cuda") else "cpu")
    seconds["pipeline_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    side = max(resolution, 32)
    t0 = time.perf_counter()
    coco = write_coco(work / "coco", {"train": images, "val": max(images // 4, 4)},
                      lambda split, i: Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))
    for artist in ARTISTS:
        (work / "artists" / artist).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(work / "artists" / artist / f"{i}.jpg")
    seconds["data_s"] = time.perf_counter() - t0
    say(f"inputs written: pipeline {seconds['pipeline_s']:.0f} s, data {seconds['data_s']:.0f} s")
    return [f"model.path={work / 'sd21'}", f"model.resolution={resolution}", f"data.root={coco}",
            f"data.concept_source={work / 'artists'}", f"data.heldout_size={max(images // 4, 4)}"], seconds


def cell_overrides(args, inputs: list[str], out: Path) -> list[str]:
    from harness.method import baseline_method

    return ["sweep=paper_sd21", *inputs, f"method={args.method or baseline_method().name}", f"pruning.ratio={args.ratio}", f"finetune.steps={args.steps}",
            f"finetune.batch_size={args.batch}", "eval.backbone=none", "tracking.enabled=false", f"runtime.device={args.device}",
            "runtime.progress=false", *args.overrides, f"out_dir={out}"]


def predict(overrides: list[str], say) -> dict:
    """What `python -m harness <overrides> --plan` estimates for the cell (same code)."""
    from harness import plan as cost_plan
    from harness.app import register_plugins
    from harness.cell import Cell
    from harness.compose import compose_config, load_with_hydra_node
    from harness.validate import validate

    register_plugins()
    config = load_with_hydra_node(overrides, False)[0]
    cfg = compose_config(overrides)
    validate(cfg)
    cell = Cell(cfg)
    plans, meta = cost_plan.plan_cells([(cell, overrides)], config, Path(config.out_dir), set())
    cost_plan.report(plans, meta, config, say)
    (p,) = plans
    return {"cell": cell.id, "calibration": meta["calibration"].source, "calibrated": meta["calibration"].calibrated,
            "seconds": p.seconds, "wall_s": p.wall_s, "peak_gpu_gb": p.peak_gb or None, "gpus": p.gpus, "train_macs": p.train_macs,
            "eval_macs": p.eval_macs}


def run_cell(overrides: list[str], say) -> float:
    """The cell as a user runs it, in a fresh process; its wall time, imports included."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"the cell failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    say(proc.stdout[-1500:])
    return wall


def measured(out: Path, wall: float) -> dict:
    (path,) = (out / "cells").glob("*/results.json")
    results = json.loads(path.read_text())
    t, cost = results["timings"], results.get("cost") or {}
    stages = {k: v for k, v in t.items() if isinstance(v, dict)}
    training = sum(v["seconds"] for v in stages.values())
    return {"process_wall_s": wall, "in_cell_s": t["total_seconds"], "training_s": training, "eval_s": t["eval_seconds"],
            "startup_s": t["total_seconds"] - training - t["eval_seconds"], "stages": stages,
            "peak_gpu_gb": cost.get("peak_gpu_gb"), "gpus": cost.get("gpus")}


def render(result: dict) -> str:
    from harness.bench.report import machine_line

    p, m = result["plan"], result["measured"]
    lines = [f"# One paper_sd21 cell ({result['arch']}, random weights)", "",
             f"Command: `{result['command']}` ({result['seconds']:.0f} s). Machine: {machine_line(result['machine'])}.", "",
             f"Plan's calibration: {p['calibration']}.", "",
             "| | planned | measured | measured / planned |", "|---|---:|---:|---:|"]

    def row(name, planned, got):
        ratio = f"{got / planned:.2f}" if planned and got is not None else "-"
        fmt = (lambda v: "-" if v is None else f"{v:.1f}")
        lines.append(f"| {name} | {fmt(planned)} | {fmt(got)} | {ratio} |")

    row("cell, in its process (s)", p["wall_s"], m["in_cell_s"])
    row("training (s)", None, m["training_s"])
    row("evaluation (s)", None, m["eval_s"])
    row("start-up inside the run (s)", None, m["startup_s"])
    row("process wall, imports included (s)", None, m["process_wall_s"])
    row("peak GPU memory (GB)", p["peak_gpu_gb"], m["peak_gpu_gb"])
    for name, stage in m["stages"].items():
        if stage.get("seconds_per_step"):
            lines.append(f"\n{name}: {stage['seconds_per_step'] * 1000:.0f} ms per step.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device={args.device} asks for a GPU and torch sees none (torch {torch.__version__}); "
              "--arch toy --device cpu runs the same steps at toy size", file=sys.stderr)
        return 2
    from harness.bench.measure import machine

    say = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as folder:
        work = Path(folder)
        inputs, written = write_inputs(work, args.arch, args.images, args.device, say)
        overrides = cell_overrides(args, inputs, work / "out")
        plan = predict(overrides, say)
        wall = run_cell(overrides, say)
        result = {"kind": f"gpu-cell-{args.arch}", "arch": args.arch, "command": "python -m harness.bench.gpu_cell " + shlex.join(argv),
                  "machine": machine(torch.device(args.device)), "overrides": [o for o in overrides if not o.startswith(str(work))],
                  "inputs_s": written, "plan": plan, "measured": measured(work / "out", wall)}
    result["seconds"] = time.perf_counter() - t0
    m = result["measured"]
    result["measured_over_planned"] = {"cell_s": m["in_cell_s"] / plan["wall_s"],
                                       "peak_gpu_gb": (m["peak_gpu_gb"] / plan["peak_gpu_gb"]) if plan["peak_gpu_gb"] and m["peak_gpu_gb"] else None}
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{result['kind']}.json").write_text(json.dumps(result, indent=1, default=str))
    (dest / f"{result['kind']}.md").write_text(render(result))
    say(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
