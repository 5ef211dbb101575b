"""`--plan`: the cost model's work agrees with torch's FLOP counter, its time estimates match
measured cells within ±30% once calibrated by finished ones, and it writes nothing."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from tests.conftest import SMALL, SMALL_WORLD


@pytest.mark.parametrize("overrides", [
    ["method=distill"],
    ["method=distill", "finetune.loss.output_kd=0", "finetune.loss.feature_kd=0"],  # no teacher forward
    ["method=two_stage", "eraser=esd", "eraser.x_source=images"],
    ["method=two_stage", "eraser=concept_ablation", "eraser.x_source=sampler", "eraser.sampler_steps=2"],
    ["method=bilevel", "method.solver=alternating", "method.K=2"],
    ["method=bilevel", "method.solver=penalty", "method.K=2"],
    ["method=bilevel", "method.K=2", "method.x_source=sampler", "eraser.sampler_steps=2", "eraser.sampler_guidance=3"],
], ids=["distill", "diffusion-only", "esd", "ca-sampler", "alternating", "penalty", "sampler-xt"])
def test_a_methods_declared_work_is_what_torch_counts(context_for, overrides):
    """Method.work × the UNets' MACs = the FLOPs torch's counter sees over the stage's steps
    (every optimizer's loss, forward and backward, as often as the stage updates it)."""
    from harness.bench.steps import method_stage, step_flops
    from harness.method import get_method
    from harness.plan import Sizes, cell_work

    ctx = context_for([*SMALL, *SMALL_WORLD, *overrides])
    stage = method_stage(ctx)
    updates = {}
    for step in range(stage.steps):
        for name in stage.updates(step):
            updates[name] = updates.get(name, 0) + 1
    counted = sum(n * step_flops(stage, name, torch.device("cpu"), [torch.Generator().manual_seed(7)]) for name, n in updates.items())
    from harness.model_sizes import _backward_shares

    report = ctx.prune_report
    sizes = Sizes(report.macs_after, report.macs_before, report.params_after, report.params_before,
                  backward=_backward_shares(copy.deepcopy(ctx.student), 8))
    declared, _, _ = cell_work(ctx.cfg, sizes)
    assert get_method(ctx.cfg.method.name).work(ctx.cfg)
    assert declared * 2 == pytest.approx(counted, rel=0.03), (declared * 2, counted)


def test_the_plan_predicts_the_smoke_cells_within_30_percent(smoke_sweep, tmp_path, capsys):
    """Calibrated by three finished cells (the references, teacher and distill, which run first
    in any sweep, and concept ablation's eraser stage: at this scale a UNet call's overhead, not
    its MACs, sets the time of an eraser step, which MACs alone understate by ~20-30%), the plan predicts each other cell's measured CPU time within ±30% (CPU
    time, not wall: other tests share the cores). Nothing is written to out_dir."""
    from harness.app import check, plan_sweep
    from harness.compose import load_with_hydra_node
    from harness.plan import plan_cells

    out, done = smoke_sweep
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = tmp_path / "out"
    args = ["sweep=smoke", "runtime.progress=false", f"out_dir={fresh}"]
    cells = plan_sweep(args)
    (fresh / "cells").mkdir(parents=True)
    references = {c.id for c, _ in cells if c.cfg.method.name in ("teacher", "distill")
                  or (c.cfg.method.name == "two_stage" and c.cfg.eraser.name == "concept_ablation")}
    for cid in references:
        shutil.copytree(out / "cells" / cid, fresh / "cells" / cid)
    plans, meta = plan_cells(cells, load_with_hydra_node(args, True)[0], fresh, set())
    assert meta["calibration"].calibrated and "3 finished cell(s)" in meta["calibration"].source
    predicted = [p for p in plans if p.cell.id not in references]
    assert len(predicted) == 3 and all(p.state == "to run" for p in predicted)
    for p in predicted:
        measured = json.loads((out / "cells" / p.cell.id / "results.json").read_text())["timings"]["total_cpu_seconds"]
        assert 0.7 <= p.seconds / measured <= 1.3, (p.cell.cfg.method.name, p.overrides, p.seconds, measured)

    before = sorted(str(f.relative_to(fresh)) for f in fresh.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        check(["-m", *args, "--plan"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "plan: smoke, 6 cells: 3 done, 0 queued, 3 to run" in printed and "calibration: 3 finished cell(s)" in printed
    assert all(p.cell.id in printed for p in plans)
    assert sorted(str(f.relative_to(fresh)) for f in fresh.rglob("*")) == before


def test_a_plan_of_a_bad_sweep_fails_in_one_line(tmp_path, capsys):
    from harness.app import check

    with pytest.raises(SystemExit) as exit_info:
        check(["-m", "sweep=smoke", "pruning.ratio=1.5", f"out_dir={tmp_path / 'o'}", "--plan"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "pruning.ratio=1.5" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_local_sweep_starts_one_process_and_a_slurm_job_one_per_cell(tmp_path, monkeypatch, capsys):
    """The calibration's per-process cost (imports, MLflow client) is paid once by a local
    sweep, whose cells run in its process, and by every cell on SLURM, each an array task."""
    from harness import plan
    from harness.app import plan_sweep
    from harness.compose import load_with_hydra_node

    calibration = plan.Calibration("test", 1e9, 1e9, startup_s=2.0, process_s=10.0)
    monkeypatch.setattr(plan, "calibrate", lambda cfg, out_dir, device: calibration)
    args = ["method=distill", *SMALL_WORLD, *SMALL, "seed=0,1,2", f"out_dir={tmp_path}"]
    local_plans, local = plan.plan_cells(plan_sweep(args), load_with_hydra_node(args, True)[0], tmp_path, set())
    slurm_args = [*args, "launcher=slurm_local"]
    slurm_plans, slurm = plan.plan_cells(plan_sweep(slurm_args), load_with_hydra_node(slurm_args, True)[0], tmp_path, set())
    assert len(local_plans) == len(slurm_plans) == 3
    assert local["process_wall_s"] == 10.0 and slurm["process_wall_s"] == 0.0
    for here, there in zip(local_plans, slurm_plans):
        assert there.seconds == pytest.approx(here.seconds + 10.0)
    plan.report(local_plans, local, load_with_hydra_node(args, True)[0])
    assert "with 10 s once for the sweep's process" in capsys.readouterr().out


def test_a_gpu_cell_is_calibrated_by_the_gpu_benchmark_of_its_own_arithmetic(tmp_path, monkeypatch):
    """harness.bench --gpu writes gpu-sd21.json under bf16 autocast and gpu-sd21-fp32.json with
    train.precision=fp32; an SD 2.1 cell on a GPU takes the distill step's rate from the file
    of its own precision (paper_sd21 is fp32, the authors' arithmetic), and a cell whose file
    is missing stays uncalibrated rather than borrowing the other's rate."""
    from harness import plan
    from tests.conftest import compose

    figures = {"gpu": {"training": {"config": {"precision": "fp32"},
                                    "per_step": {"distill": {"flops_lower": 3.0e15, "seconds": 1.5}}}}}
    (tmp_path / plan.gpu_bench_file("sd21", bf16=False)).write_text(json.dumps(figures))
    monkeypatch.setattr(plan, "BENCH_DOCS", tmp_path)
    fp32 = plan.calibrate(compose(["sweep=paper_sd21"]), tmp_path / "out", "cuda")
    assert fp32.calibrated and fp32.train_rate == fp32.eval_rate == pytest.approx(3.0e15 / 2 / 1.5)
    assert "gpu-sd21-fp32.json" in fp32.source and "fp32 arithmetic" in fp32.source
    bf16 = plan.calibrate(compose(["sweep=paper_sd21", "train.precision=bf16"]), tmp_path / "out", "cuda")
    assert not bf16.calibrated and bf16.source.startswith("UNCALIBRATED") and "bf16" in bf16.source
    assert plan.gpu_bench_file("sd21", bf16=True) == "gpu-sd21.json"
