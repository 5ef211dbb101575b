"""python -m harness.bench: what each method and the harness itself cost, measured side by side.

    python -m harness.bench                          # CPU, embedded default (about 8 min on 2 cores)
    python -m harness.bench --sections robustness    # the robustness probes' cost beside training
    python -m harness.bench --sections training      # one section
    python -m harness.bench --gpu                    # SD 2.1-scale step on the GPU (under 5 min)
    python -m harness.bench ... finetune.batch_size=8  # Hydra overrides of the benchmarked config

Writes <dest>/<kind>.json (every figure, the machine, versions, date) and <dest>/<kind>.md."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

# The embedded default at paper_table's scale (sweeps/paper_table.yaml).
PAPER_TABLE = ["finetune.batch_size=16", "finetune.steps=150", "eraser.steps=40", "eraser.sampler_steps=10", "pruning.ratio=0.05"]
SECTIONS = ("training", "evaluation", "cell", "robustness")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the benchmarked config (after the paper_table scale)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)} (CPU mode)")
    p.add_argument("--gpu", action="store_true", help="the SD 2.1-scale GPU mode instead")
    p.add_argument("--arch", default="sd21", choices=("sd21", "toy"), help="GPU mode's UNet (toy: the layout at toy size)")
    p.add_argument("--ratio", type=float, default=0.3, help="GPU mode: pruning ratio of the student (0: unpruned copy)")
    p.add_argument("--device", default=None, help="default: cuda with --gpu, else cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--turn-steps", type=int, default=None,
                   help="steps each training loop runs per turn (measure.round_robin); default 5 on a CPU, "
                        "a whole loop in one turn in GPU mode (each turn resumes from a checkpoint: 3.7 GB at SD 2.1's scale)")
    p.add_argument("--ks", default="5,10,20", help="inner-step counts to time, for the methods that have one (their inner_steps_key)")
    p.add_argument("--only", default=None, help="training variants to run (comma-separated names; default all)")
    p.add_argument("--gen-images", type=int, default=64, help="images generated for the generation figure")
    p.add_argument("--sizes", default="1000,10000", help="image counts for feature extraction and metrics")
    p.add_argument("--eval-repeats", type=int, default=2)
    p.add_argument("--cell-repeats", type=int, default=1)
    p.add_argument("--sweep-cells", type=int, default=4, help="cell section: the larger local sweep whose further cells' overhead is measured (≥ 2)")
    p.add_argument("--dest", default="outputs/bench", help="folder for <kind>.json and <kind>.md")
    return p.parse_args(argv)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        return fail(f"--sections={','.join(unknown)} is not accepted: any of {', '.join(SECTIONS)}")
    if args.sweep_cells < 2:
        return fail(f"--sweep-cells={args.sweep_cells} is not accepted: at least 2 (a sweep of 1 cell is the other measurement)")
    device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device={device} asks for a GPU and torch sees none (torch {torch.__version__}, "
                    f"CUDA build {torch.version.cuda or 'none'}); run the CPU benchmark without --gpu")
    from harness.compose import compose_config
    from harness.bench import cell_overhead, evaluation, gpu, measure, report, training
    from harness.errors import ConfigError, MissingInputError
    from harness.plan import gpu_bench_file
    from harness.method import baseline_method
    overrides = [*PAPER_TABLE, *args.overrides, f"runtime.device={device}"]
    ks = tuple(int(k) for k in args.ks.split(","))
    # A turn ends in a checkpoint that the next turn resumes from (HarnessLoop, as a resumed cell
    # does). At SD 2.1's scale that is a 3.7 GB write and read per turn: on an H200 five turns of
    # four loops spent over 200 s in them and filled the disk. There a loop runs whole, in one
    # turn that writes no checkpoint, and the repeats alternate the loops' order against drift.
    turn_steps = args.turn_steps or (args.warmup + args.window if args.gpu else 5)
    only = args.only.split(",") if args.only else None

    def compose(extra):
        return compose_config([*overrides, *extra])

    try:  # a broken override or a bad value: one line, before anything runs
        from harness.validate import validate

        validate(compose([f"method={baseline_method().name}"]))
    except Exception as exc:
        return fail(str(exc).strip().splitlines()[0])
    # the GPU figures by architecture and arithmetic: the plan calibrates a cell by the file of its own
    precision = compose([]).train.precision
    kind = gpu_bench_file(args.arch, precision != "fp32").removesuffix(".json") if args.gpu else "cpu"
    dest = Path(args.dest)
    result = {"kind": kind, "command": "python -m harness.bench " + shlex.join(argv), "machine": measure.machine(device)}
    t0 = time.perf_counter()
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        with tempfile.TemporaryDirectory() as folder:
            if args.gpu:
                ctx, build = gpu.context(compose([f"method={baseline_method().name}"]), device, args.arch, args.ratio, Path(folder), say)
                section = training.run(ctx, compose, [], args.repeats, args.warmup, args.window, ks, only or training.gpu_names(ks),
                                       args.log_every, turn_steps, say=say)
                result["gpu"] = {"arch": args.arch, "ratio": args.ratio, "build": build, "training": section,
                                 "mfu": gpu.mfu(section, device)}
            else:
                base = None
                if "training" in sections or "evaluation" in sections:
                    base = training.base_context(compose, [], Path(folder))
                if "training" in sections:
                    result["training"] = training.run(base, compose, [], args.repeats, args.warmup, args.window, ks, only,
                                                      args.log_every, turn_steps, say=say)
                if "evaluation" in sections:
                    from harness.metrics.world import WorldBackbones

                    say("evaluation: generation, features, metrics")
                    backbones = WorldBackbones(base.cfg.eval.weights, device)
                    result["evaluation"] = {
                        "generation": evaluation.generation(base, args.gen_images, args.eval_repeats),
                        "features_and_metrics": evaluation.features_and_metrics(
                            base, backbones, tuple(int(n) for n in args.sizes.split(",")), args.eval_repeats),
                    }
                if "cell" in sections:
                    say("per-cell overhead: the smoke sweep's baseline cell, in fresh processes")
                    result["cell"] = cell_overhead.run([*cell_overhead.smoke_cell(), *args.overrides], args.cell_repeats, say,
                                                      args.sweep_cells)
                if "robustness" in sections:  # the probes' cost beside the probed cell's training
                    from harness.bench import probes

                    result["robustness"] = probes.run([*PAPER_TABLE, *args.overrides], say)
    except (ConfigError, MissingInputError) as exc:
        return fail(str(exc))
    result["seconds"] = time.perf_counter() - t0
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{kind}.json").write_text(json.dumps(result, indent=1))
    (dest / f"{kind}.md").write_text(report.render(result))
    say(report.render(result))
    say(f"wrote {dest / f'{kind}.json'} and {dest / f'{kind}.md'} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
