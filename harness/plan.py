"""`python -m harness -m <sweep> --plan`: what a sweep will cost, before anything runs.

For every cell: its state (done / queued / to run), its overrides and id, and estimates of its
time, GPU-hours, peak GPU memory and disk; then the sweep's totals and, with launcher=slurm,
the scheduler's verdict on the request (`sbatch --test-only`). Nothing is trained or written.

The cost model, stated (the plan prints it):
- work: each stage a method declares (`Method.work`: steps × batch × passes per image) times
  the UNets' multiply-accumulates per image — the pruned student's and the teacher's, counted
  at the model's own latent size (`harness.pruning.count_macs_params`); plus one VAE encode
  per training image of a latent model; plus evaluation: every image it samples (neutral,
  per-concept, grid, recovery sets) × sampler steps × 2 with classifier-free guidance × the
  student's MACs (+ a VAE decode), and the model-level metrics' forwards. Torch's FLOP counter
  agrees with the training part on every benchmark step (tests/test_plan.py).
- time: a fixed in-cell start-up + training work / training rate + evaluation work / sampling
  rate, on one device; data parallelism divides the work by the GPUs per cell.
- calibration, first found: finished cells in out_dir of the same model on the same kind of
  device (their measured seconds per MAC: CPU-seconds on a CPU, wall on a GPU); else
  `harness.bench --gpu` figures (docs/bench/gpu.json) for the training rate; else
  uncalibrated: 35% of an H100's dense bf16 peak and a 300 s start-up, marked as such.
- peak GPU memory: weights, gradients and AdamW state (16 bytes per trained parameter), the
  frozen models' weights (4 bytes per parameter), and activations: the bytes autograd saves
  for one image at the pruning's trace size, scaled by latent area and the batch per GPU.
- disk: the checkpoints kept (weights + optimizer state) and the evaluation images (PNG,
  assumed half the raw size).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.model_sizes import Sizes, sizes

H100_BF16 = 989e12  # FLOP/s, dense (harness/bench/gpu.py's table)
ASSUMED_MFU = 0.35
ASSUMED_STARTUP_S = 300.0
PNG_SHARE = 0.5
BENCH_DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"  # harness.bench's committed figures


@dataclass
class Calibration:
    source: str
    train_rate: float  # MAC per device-second, training
    eval_rate: float  # MAC per device-second, evaluation
    startup_s: float  # a cell's fixed cost inside a running process (config, MLflow run, model, data, results)
    calibrated: bool = True
    per_image_s: float = 0.0  # evaluation's cost per image beside the UNet (metric backbones, decoding to files)
    process_s: float = 0.0  # a fresh process's cost before its first cell (imports, MLflow client), single-threaded
    #                         (CPU-seconds = seconds): once per local sweep, once per cell on SLURM (an array task is a process)


@dataclass
class CellPlan:
    cell: object
    overrides: list[str]
    state: str
    train_macs: float
    eval_macs: float
    seconds: float = 0.0  # device-seconds on one device
    wall_s: float = 0.0
    gpu_h: float = 0.0
    peak_gb: float = 0.0
    disk_gb: float = 0.0
    stages: list = field(default_factory=list)
    gpus: int = 0


# -- work ---------------------------------------------------------------------------------------
def eval_images(cfg: DictConfig) -> tuple[int, int]:
    """(images sampled, images forwarded for model-level metrics) by a cell's evaluation
    (harness/evaluation.py): neutral + per-concept sets, the grid, each recovery step's neutral
    set; held-out MSE of student and teacher, guidance alignment per concept; the robustness
    probes where they are on."""
    from harness import concepts as registry
    from harness.method import get_method

    ev = cfg.eval
    which = ev.concepts
    if which == "auto":
        which = "set" if get_method(cfg.method.name).erases else "all"
    if which == "all":
        n_concepts = len(registry.DOMAINS[cfg.data.domain])
    else:
        erase, retain = registry.resolve_set(cfg.data.domain, cfg.concepts.erase, cfg.concepts.retain)
        n_concepts = len(erase) + len(retain)
    images = (ev.grid_neutral + n_concepts) if (ev.grid_neutral or n_concepts) else 0
    if ev.backbone != "none":
        images += ev.neutral_prompts + ev.concept_prompts * n_concepts + len(ev.recovery_steps or []) * ev.neutral_prompts
    heldout = cfg.data.heldout_size
    forwards = heldout * 2 + n_concepts * heldout * 4 + len(ev.recovery_steps or []) * heldout
    from harness import robustness

    probe_images, probe_forwards = robustness.work(cfg)  # eval.robustness: attacks, relearning, neighbours
    return images + probe_images, forwards + probe_forwards


def cell_work(cfg: DictConfig, s: Sizes) -> tuple[float, float, list]:
    """(training MACs, evaluation MACs, [(stage, MACs)]) of one cell."""
    from harness.method import get_method

    stages = []
    for w in get_method(cfg.method.name).work(cfg):
        trained = w.trained * (1.0 + s.backward.get(w.subset, 2.0)) * s.student_macs
        per_image = trained + w.student * s.student_macs + w.teacher * s.teacher_macs + w.encode * s.encode_macs
        stages.append((w.stage, w.steps * w.batch * per_image))
    sampled, forwards = eval_images(cfg)
    guided = 1.0 if float(cfg.eval.guidance) == 1.0 else 2.0
    eval_macs = sampled * (cfg.eval.sample_steps * guided * s.student_macs + s.decode_macs) + forwards * s.student_macs
    return sum(m for _, m in stages), eval_macs, stages


# -- calibration --------------------------------------------------------------------------------
def calibrate(cfg: DictConfig, out_dir: Path, device: str) -> Calibration:
    """Seconds per MAC from the finished cells of the same model and device kind in out_dir,
    else harness.bench figures, else stated assumptions."""
    train_macs = train_s = 0.0
    evals, startups = [], []
    for folder in sorted((out_dir / "cells").glob("*/results.json")) if (out_dir / "cells").is_dir() else []:
        results = json.loads(folder.read_text())
        timing, config = results.get("timings") or {}, OmegaConf.create(results.get("config") or {})
        on = "cuda" if (results.get("cost") or {}).get("gpus") else "cpu"
        if on != device or config.get("model", {}).get("name") != cfg.model.name or "total_cpu_seconds" not in timing:
            continue
        try:
            t_macs, e_macs, _ = cell_work(config, sizes(config))
            images = eval_images(config)[0]
        except Exception:  # a cell of another checkout's methods or configs: not a calibration point
            continue
        clock = (lambda k: timing.get(k.replace("seconds", "cpu_seconds"))) if on == "cpu" else timing.get
        stage_s = sum((v.get("cpu_seconds") if on == "cpu" else v.get("seconds")) or 0.0
                      for v in timing.values() if isinstance(v, dict))
        if t_macs:
            train_macs, train_s = train_macs + t_macs, train_s + stage_s
        evals.append((images, e_macs, clock("eval_seconds")))
        startups.append(clock("total_seconds") - clock("eval_seconds") - stage_s)
    docs = BENCH_DOCS
    cell_bench = (json.loads((docs / "cpu.json").read_text()).get("cell") or {}) if (docs / "cpu.json").is_file() else {}
    if evals:
        per_image, eval_rate = _fit_evaluation(evals)
        train_rate = train_macs / train_s if train_s > 0 else eval_rate
        unit = "CPU-seconds" if device == "cpu" else "GPU wall seconds"
        return Calibration(f"{len(evals)} finished cell(s) of model={cfg.model.name} on {device} in {out_dir} ({unit}): "
                           f"training {train_rate * 2 / 1e9:.3g} GFLOP/s, sampling {eval_rate * 2 / 1e9:.3g} GFLOP/s "
                           f"+ {per_image:.3g} s per evaluated image, start-up {sum(startups) / len(startups):.3g} s",
                           train_rate, eval_rate, sum(startups) / len(startups), per_image_s=per_image,
                           process_s=_process_s(cell_bench, device))
    from harness.method import baseline_method

    baseline = baseline_method().name  # the benchmark's baseline step: plain fine-tuning
    if device == "cpu" and (docs / "cpu.json").is_file():
        figures = json.loads((docs / "cpu.json").read_text())
        row = (figures.get("training") or {}).get("per_step", {}).get(baseline) or {}
        threads = (figures.get("machine") or {}).get("torch_threads") or 1
        if row.get("flops_lower") and row.get("seconds"):
            rate = row["flops_lower"] / 2 / (row["seconds"] * threads)  # per CPU-second: wall × threads
            fixed = cell_bench.get("fixed_s") or ASSUMED_STARTUP_S
            further = (cell_bench.get("in_a_sweep") or {}).get("per_further_cell_s")
            startup = fixed if further is None else min(max(further, 0.0), fixed)  # a noisy negative difference: none
            return Calibration(f"harness.bench figures of the reference machine ({docs / 'cpu.json'}: "
                               f"{(figures.get('machine') or {}).get('cpu')}, {threads} threads): the {baseline} step's rate for "
                               f"training and sampling, a {startup:.3g} s start-up per cell and {fixed - startup:.3g} s per process; "
                               "run a cell here to calibrate to this machine",
                               rate, rate, startup * threads, process_s=fixed - startup)
    bf16 = cfg.train.get("precision") in ("bf16", "auto")  # auto: bf16 autocast on CUDA (Trainer)
    bench = docs / gpu_bench_file("sd21", bf16) if cfg.model.name == "sd21" else None  # the GPU benchmark's architecture
    if device == "cuda" and bench is not None and bench.is_file():
        section = (json.loads(bench.read_text()).get("gpu") or {}).get("training") or {}
        row = section.get("per_step", {}).get(baseline) or {}
        if row.get("flops_lower") and row.get("seconds"):
            rate = row["flops_lower"] / 2 / row["seconds"]
            return Calibration(f"harness.bench --gpu ({bench}: {(section.get('config') or {}).get('precision')} arithmetic): the {baseline} "
                               f"step's rate, {rate * 2 / 1e12:.0f} TFLOP/s, for training and sampling; start-up assumed "
                               f"{ASSUMED_STARTUP_S:.0f} s; run a cell to calibrate both", rate, rate, ASSUMED_STARTUP_S)
    peak = H100_BF16 if bf16 else H100_BF16 / 2  # fp32: convolutions in TF32 (PyTorch's default), half the bf16 peak
    rate = ASSUMED_MFU * peak / 2
    return Calibration(f"UNCALIBRATED: assumes {ASSUMED_MFU:.0%} of an H100's dense {'bf16' if bf16 else 'TF32'} peak "
                       f"({peak / 1e12:.0f} TFLOP/s) and a {ASSUMED_STARTUP_S:.0f} s start-up per cell; run cells "
                       "(or python -m harness.bench --gpu) to calibrate", rate, rate, ASSUMED_STARTUP_S, calibrated=False)


def gpu_bench_file(arch: str, bf16: bool) -> str:
    """The `harness.bench --gpu --arch <arch>` figures of a cell's arithmetic: the benchmark
    writes gpu-<arch>.json under bf16 autocast, gpu-<arch>-fp32.json with train.precision=fp32."""
    return f"gpu-{arch}{'' if bf16 else '-fp32'}.json"


def _process_s(cell_bench: dict, device: str) -> float:
    """A fresh process's cost before its first cell, in the calibration's unit, from the bench's
    cell section (its fixed overhead in a fresh process less that of a further cell in a
    sweep, which the finished cells' own start-up already holds); 0 where not measured."""
    fixed, further = cell_bench.get("fixed_s"), (cell_bench.get("in_a_sweep") or {}).get("per_further_cell_s")
    if device != "cpu" or fixed is None or further is None:
        return 0.0
    return max(fixed - further, 0.0)


def _fit_evaluation(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """(seconds per evaluated image, MACs per second) from [(images, MACs, seconds)]: least
    squares on both when the cells tell them apart (at the world's scale the per-image cost
    of metrics and files is most of an evaluation; at SD 2.1's the UNet's MACs are), else
    the MAC rate alone."""
    import numpy as np

    a = np.array([[i, m] for i, m, _ in points], dtype=float)
    y = np.array([t for _, _, t in points], dtype=float)
    if len(points) >= 2 and np.linalg.matrix_rank(a / a.max(axis=0)) == 2:
        (per_image, per_mac), *_ = np.linalg.lstsq(a, y, rcond=None)
        if per_image >= 0 and per_mac > 0:
            return float(per_image), float(1 / per_mac)
    return 0.0, float(a[:, 1].sum() / y.sum())


# -- the plan ----------------------------------------------------------------------------------
def gpus_per_cell(config: DictConfig) -> int:
    launcher = (config.get("hydra") or {}).get("launcher") or {}
    if "harness_launcher" not in str(launcher.get("_target_", "")):
        return 0 if config.runtime.device == "cpu" or not _cuda() else 1
    return int(launcher.get("gpus_per_node") or 1) * int(launcher.get("nodes") or 1)


def _threads(cfg: DictConfig) -> int:
    import torch

    return int(cfg.runtime.get("threads") or torch.get_num_threads())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_cells(cells, config: DictConfig, out_dir: Path, busy: set[str]) -> tuple[list[CellPlan], dict]:
    from harness.validate import processes_for

    preset = gpus_per_cell(config)
    launcher = (config.get("hydra") or {}).get("launcher") or {}
    on_slurm = "harness_launcher" in str(launcher.get("_target_", ""))
    device = "cuda" if preset else "cpu"
    calibration = None
    plans = []
    for cell, overrides in cells:
        cfg = cell.cfg
        gpus = preset  # a SLURM cell whose batch does not split over the preset's GPUs gets fewer (launch/slurm.py)
        if preset > 1 and int(launcher.get("nodes") or 1) == 1:
            gpus = processes_for(cfg, preset)
        if calibration is None:
            calibration = calibrate(cfg, out_dir, device)
        s = sizes(cfg)
        train, ev, stages = cell_work(cfg, s)
        evaluation = ev / calibration.eval_rate + eval_images(cfg)[0] * calibration.per_image_s
        startup = calibration.startup_s + (calibration.process_s if on_slurm else 0.0)  # a SLURM job starts a process
        seconds = startup + train / calibration.train_rate + evaluation
        parallel = max(gpus, 1)
        # data parallelism splits the training; evaluation runs on one process (runner)
        wall = startup + train / calibration.train_rate / parallel + evaluation
        if not gpus:  # CPU-seconds over the threads a cell uses
            wall = seconds / _threads(cfg)
        state = "done" if cell.done else "queued" if cell.id in busy else "to run"
        plans.append(CellPlan(cell, overrides, state, train, ev, seconds, wall, wall * gpus / 3600,
                              peak_memory(cfg, s, parallel) if gpus else 0.0, disk(cfg, s), stages, gpus))
    once = 0.0 if on_slurm or calibration is None else calibration.process_s
    return plans, {"calibration": calibration, "gpus": preset, "device": device, "process_wall_s": once}


def peak_memory(cfg: DictConfig, s: Sizes, gpus: int) -> float:
    """GB on one GPU while training (the largest stage's batch per GPU)."""
    from harness.method import get_method

    works = get_method(cfg.method.name).work(cfg)
    if not works:
        return (s.teacher_params + s.frozen_params) * 4 / 2**30
    copies = len({w.trains for w in works})  # each trained copy: weights, gradients, AdamW state
    batch = max(math.ceil(w.batch / gpus) for w in works)
    frozen_copy = any(w.student for w in works)  # gradient-free student-sized forwards: a frozen copy (two-stage's F)
    bytes_ = (16 * s.student_params * copies + 4 * (s.teacher_params + s.frozen_params + frozen_copy * s.student_params)
              + batch * s.activation_bytes)
    if cfg.train.get("precision") in ("bf16", "auto"):  # auto: bf16 autocast on CUDA (Trainer)
        bytes_ -= batch * s.activation_bytes / 2  # autocast keeps most saved activations in bf16
    return bytes_ / 2**30


def disk(cfg: DictConfig, s: Sizes) -> float:
    from harness.method import get_method

    works = get_method(cfg.method.name).work(cfg)
    kept = cfg.runtime.keep_checkpoints + len(cfg.eval.recovery_steps or [])
    ckpt = (4 + 8) * s.student_params * kept * len({w.trains for w in works})  # weights + AdamW state per trained copy
    sampled, _ = eval_images(cfg)
    pixels = cfg.model.resolution ** 2 * 3
    return (ckpt + 2 * 4 * s.student_params + sampled * pixels * PNG_SHARE) / 2**30


def _reference_wall(p: CellPlan, plans: list[CellPlan]) -> float:
    """The time of the to-run cell this one starts from or is compared with (it runs first)."""
    from harness.cell import cell_id
    from harness.method import get_method

    ref = get_method(p.cell.cfg.method.name).reference(p.cell.cfg)
    if ref is None:
        return 0.0
    rid = cell_id(ref)
    return next((q.wall_s for q in plans if q.cell.id == rid and q.state == "to run"), 0.0)


def _si(x: float) -> str:
    """A count with an SI prefix: 6.2 T, 1.5 E."""
    for value, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= value:
            return f"{x / value:.3g} {prefix}"
    return f"{x:.3g}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def report(plans: list[CellPlan], meta: dict, config: DictConfig, say=print) -> None:
    from harness.method import get_method
    from harness.record import method_label
    from harness.tracking import flatten

    cal, gpus = meta["calibration"], meta["gpus"]
    launcher = (config.get("hydra") or {}).get("launcher") or {}
    counts = {k: sum(p.state == k for p in plans) for k in ("done", "queued", "to run")}
    where = f"SLURM, {gpus} GPU(s) per cell" if "harness_launcher" in str(launcher.get("_target_", "")) else f"local, {meta['device']}"
    say(f"plan: {config.get('sweep_name') or 'adhoc'}, {len(plans)} cells: {counts['done']} done, {counts['queued']} queued, "
        f"{counts['to run']} to run ({where}); nothing has been trained or written")
    say("cost model: work = Σ stages steps × batch × (student passes × student MACs + teacher forwards × teacher MACs + "
        "VAE encodes) + evaluation (images × sampler steps × 2 with CFG × student MACs); time = start-up + work / rate")
    say(f"calibration: {cal.source}")
    unit = "GPU-h" if gpus else "CPU-h"
    say(f"| cell | state | method | ratio | student MAC/img | training MAC | evaluation MAC | GPUs | time per cell | {unit} | peak GPU GB | disk GB | overrides |")
    say("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    todo = [p for p in plans if p.state == "to run"]
    shared = set.intersection(*(set(p.overrides) for p in plans)) if len(plans) > 1 else set()  # the command line's
    for p in plans:
        cfg = p.cell.cfg
        s = sizes(cfg)
        label = method_label(flatten(OmegaConf.to_container(cfg, resolve=True)))
        hours = p.gpu_h if gpus else p.seconds / 3600
        ratio = f"{cfg.pruning.ratio:g}" if get_method(cfg.method.name).prunes else "-"
        peak = f"{p.peak_gb:.1f}" if gpus else "-"
        say(f"| {p.cell.id} | {p.state} | {label} | {ratio} | {_si(s.student_macs)} | {_si(p.train_macs)} | "
            f"{_si(p.eval_macs)} | {p.gpus or '-'} | {_hours(p.wall_s)} | {hours:.3g} | {peak} | {p.disk_gb:.2f} | {' '.join(o for o in p.overrides if o not in shared)} |")
    total_h = sum((p.gpu_h if gpus else p.seconds / 3600) for p in todo)
    parallel = int(launcher.get("array_parallelism") or 1) if gpus else 1
    longest = max((p.wall_s + _reference_wall(p, plans) for p in todo), default=0.0)
    once = meta.get("process_wall_s", 0.0) if todo else 0.0  # a local sweep starts one process for all its cells
    wall = max(longest, sum(p.wall_s for p in todo) / parallel) + once
    say(f"to run: {len(todo)} cells, {total_h:.3g} {unit}, about {_hours(wall)} of wall time "
        f"({'at most ' + str(parallel) + ' at once' if gpus else 'one after another'}"
        + (f", with {_hours(once)} once for the sweep's process" if once else "")
        + f"; longest chain of a cell after its reference {_hours(longest)})")
    timeout = launcher.get("timeout_min")
    if timeout and todo:
        over = [p for p in todo if p.wall_s > timeout * 60]
        if over:
            attempts = max(math.ceil(p.wall_s / (timeout * 60)) for p in over)
            say(f"time limit: {len(over)} cell(s) outlast timeout_min={timeout} and resume from checkpoints over up to "
                f"{attempts} attempts (max_num_timeout={launcher.get('max_num_timeout')})")
    if not cal.calibrated:
        say("note: uncalibrated estimates; the plan's figures are the cost model's, not measurements")


def run(cells, config: DictConfig, say=print) -> None:
    """Print the plan of `cells` ([(Cell, overrides)], validated) for the composed `config`;
    with launcher=slurm, then ask the scheduler about the request (exits 2 on a refusal)."""
    out_dir = Path(config.out_dir)
    launcher = (config.get("hydra") or {}).get("launcher") or {}
    on_slurm = "harness_launcher" in str(launcher.get("_target_", ""))
    busy: set[str] = set()
    if on_slurm and (out_dir / "slurm").is_dir():
        from harness.launch import records

        busy = records.in_flight(records.load_submissions(out_dir))  # read only: no reconcile
    plans, meta = plan_cells(cells, config, out_dir, busy)
    report(plans, meta, config, say)
    from harness.validate import missing_inputs

    missing = list(dict.fromkeys(m for cell, _ in cells for m in missing_inputs(cell.cfg)))
    for line in missing:
        say(f"missing input (the run would stop here): {line}")
    todo = sum(p.state == "to run" for p in plans)
    if on_slurm and todo and not missing:
        from harness.launch.slurm import HarnessSlurmLauncher

        params = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"}
        slurm = HarnessSlurmLauncher(**params)
        full = int(params.get("gpus_per_node") or 0)
        for gpus, group in sorted(slurm.gpu_groups([(p.cell,) for p in plans if p.state == "to run"]).items()):
            slurm.test_only(len(group), None if gpus == full else gpus)
            asked = {**{k: launcher.get(k) for k in ("partition", "cpus_per_gpu", "mem_per_gpu", "timeout_min")}, "gpus_per_node": gpus}
            say(f"sbatch --test-only: SLURM accepts the array of {len(group)} cells "
                f"({', '.join(f'{k}={v}' for k, v in asked.items() if v is not None)})")
