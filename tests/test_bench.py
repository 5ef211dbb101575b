"""The benchmark script (harness/bench): the hand-written loop does the harness's math, every
section runs at tiny scale and writes its JSON and Markdown, the GPU mode's code runs on the
CPU at toy size, and bad requests fail in one line. (Timings are measured by the script, never
asserted here.)"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import SMALL, SMALL_WORLD, run_cli

TINY_BENCH = ["--repeats", "1", "--warmup", "10", "--window", "10", "--ks", "5", "--eval-repeats", "1",
              "--gen-images", "8", "--sizes", "64", "--cell-repeats", "1", "--sweep-cells", "2"]


@pytest.mark.numerics
def test_the_hand_written_loop_does_the_harness_distill_math(context_for, tmp_path):
    from harness.bench import plain_loop
    from harness.bench.steps import method_stage, plain_batches, plain_kwargs, trainer_for, variant_context

    ctx = context_for(["method=distill", "finetune.warmup_steps=2", "finetune.caption_dropout=0.5"])
    steps = 4
    pristine = ctx.student
    harness_ctx = variant_context(ctx, ctx.cfg, pristine)
    stage = method_stage(harness_ctx)
    stage.steps = steps
    trainer = trainer_for(ctx.cfg, ctx.device)
    trainer.fit(stage, tmp_path / "ckpt")

    plain_student = variant_context(ctx, ctx.cfg, pristine).student
    plain_loop.train(plain_student, ctx.teacher, ctx.parts.text_encoder, ctx.parts.tokenizer, ctx.parts.noise_scheduler,
                     plain_batches(ctx, steps), steps, lambda s: trainer.generator(stage, s), ctx.kept, **plain_kwargs(ctx))
    moved = max((a - b).abs().max().item() for a, b in zip(harness_ctx.student.parameters(), pristine.parameters()))
    diff = max((a - b).abs().max().item() for a, b in zip(harness_ctx.student.parameters(), plain_student.parameters()))
    assert moved > 1e-4  # both trained
    assert diff < 1e-6 * max(moved, 1.0), (diff, moved)


def test_a_feature_kd_term_left_out_of_the_plain_loop_is_noticed(context_for, tmp_path):
    """The equality above is sharp: dropping one loss term moves the weights measurably."""
    from harness.bench import plain_loop
    from harness.bench.steps import method_stage, plain_batches, plain_kwargs, trainer_for, variant_context

    ctx = context_for(["method=distill"])
    pristine = ctx.student
    harness_ctx = variant_context(ctx, ctx.cfg, pristine)
    stage = method_stage(harness_ctx)
    stage.steps = 3
    trainer = trainer_for(ctx.cfg, ctx.device)
    trainer.fit(stage, tmp_path / "ckpt")
    plain_student = variant_context(ctx, ctx.cfg, pristine).student
    kwargs = {**plain_kwargs(ctx), "w_feature": 0.0}
    plain_loop.train(plain_student, ctx.teacher, ctx.parts.text_encoder, ctx.parts.tokenizer, ctx.parts.noise_scheduler,
                     plain_batches(ctx, 3), 3, lambda s: trainer.generator(stage, s), ctx.kept, **kwargs)
    diff = max((a - b).abs().max().item() for a, b in zip(harness_ctx.student.parameters(), plain_student.parameters()))
    assert diff > 1e-6


def test_a_loop_writes_checkpoints_only_for_turns_that_another_resumes(context_for, monkeypatch):
    """A benchmark loop resumes each turn from the last one's checkpoint, as a cell does; its
    last turn's would be read by nothing (at SD 2.1's size each is 3.7 GB). A loop of three
    turns writes two, and a loop run whole in one turn writes none."""
    from harness.bench.steps import HarnessLoop, method_stage, variant_context
    from harness.trainer import Trainer

    ctx = context_for(["method=distill"])
    saved = []
    save = Trainer._save
    monkeypatch.setattr(Trainer, "_save", lambda self, folder, stage, *a, **k: (saved.append(a[1]), save(self, folder, stage, *a, **k)))
    loop = HarnessLoop(method_stage(variant_context(ctx, ctx.cfg, ctx.student)), ctx.cfg, ctx.device, 5)
    durations = [d for _ in range(3) for d in loop.advance(2)]
    assert loop.finished and len(durations) == 5 and saved == [2, 4]
    saved.clear()
    whole = HarnessLoop(method_stage(variant_context(ctx, ctx.cfg, ctx.student)), ctx.cfg, ctx.device, 5)
    assert len(whole.advance(5)) == 5 and whole.finished and saved == []


def test_ratios_are_medians_of_ratios_within_a_repeat():
    from harness.bench.measure import Repeats

    rep = Repeats()
    for a, b in [(1.0, 1.0), (4.0, 2.0), (3.0, 2.0)]:  # a slow second repeat slows both sides
        rep.add("a", a)
        rep.add("b", b)
    assert rep.ratio("a", "b") == 1.5
    assert rep.median("a") == 3.0 and rep.spread("b") == (1.0, 2.0)


def test_peak_memory_sees_an_allocation_inside():
    from harness.bench.measure import PeakMemory

    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
    del block
    assert peak.added_gb > 0.04 and peak.gb >= peak.added_gb


def test_cpu_sections_run_and_write_json_and_markdown(tmp_path):
    dest = tmp_path / "bench"
    probes = ["eval.robustness.prompts=2", "eval.robustness.iterations=[1,2]", "eval.robustness.relearn_steps=2"]
    proc = run_cli(["harness.bench", *TINY_BENCH, "--dest", str(dest), *SMALL_WORLD, *SMALL, *probes], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((dest / "cpu.json").read_text())
    t = result["training"]
    expected = {"distill", "plain loop", "eraser esd", "eraser concept_ablation", "bilevel alternating K=5",
                "bilevel penalty K=5", "bilevel alternating K=10 sampler x_t"}
    assert set(t["per_step"]) == expected
    assert all(r["seconds"] > 0 for r in t["per_step"].values())
    assert t["overhead"]["harness_vs_plain"] > 0
    assert t["config"]["baseline"] == "distill" and t["config"]["batch_sizes"]["method.upper_batch_size"] > 0
    for name, b in t["vs_baseline"].items():
        row = t["per_step"][name]
        # the theory is the FLOP count: a lower step, and the window's upper steps spread over it
        assert row["flops_upper"] > 0 and b["theory"] > 1
        assert b["off_theory"] == pytest.approx(b["measured"] / b["theory"] - 1)
    # an ESD upper step (2 frozen-teacher forwards + a student forward/backward) costs more than
    # a distill step's FLOPs per sample: at equal batch sizes, a K=5 bilevel step must cost more
    assert t["vs_baseline"]["bilevel alternating K=5"]["theory"] > 1.1
    assert t["vs_baseline"]["bilevel alternating K=5"]["cap"] is None  # the 1.15 cap is K=10's
    assert set(t["whole_method"]["pairs"]) == {f"{b} vs distill + eraser {e}" for b in t["vs_baseline"]
                                               for e in ("esd", "concept_ablation")}
    ev = result["evaluation"]
    assert ev["generation"]["images"] == 8 and ev["generation"]["images_per_s"] > 0
    assert set(ev["features_and_metrics"]["64"]) >= {"fid features", "cmmd", "fid", "clip score", "csd", "cp score", "presence"}
    cell = result["cell"]
    parts = cell["parts_s"]
    assert cell["wall_s"] > cell["training_s"] > 0 and 0 < cell["fixed_share"] < 1
    assert parts["process start + imports"] > 1  # torch and diffusers alone take seconds
    assert cell["fixed_s"] == pytest.approx(cell["wall_s"] - cell["training_s"] - cell["evaluation_s"])
    sweeps = cell["in_a_sweep"]["sweeps"]  # a sweep of 1 cell and one of 2 seeds (each with the references it needs)
    assert sweeps["2"]["cells"] > sweeps["1"]["cells"] >= 1 and isinstance(cell["in_a_sweep"]["per_further_cell_s"], float)
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cpu_count"] >= 1
    probed = result["robustness"]
    assert probed["budget"]["prompts"] == 2 and probed["budget"]["iterations"] == [1, 2]  # the probes' overrides reach the probe
    assert probed["training_s"] > 0 and probed["probe_s"] > 0 and probed["probe_vs_training"] == pytest.approx(probed["probe_s"] / probed["training_s"])
    assert [i for i, _ in probed["curves"]["stripes"]["soft"]] == [1, 2]
    md = (dest / "cpu.md").read_text()
    assert "harness distill step / hand-written loop" in md and "Per-cell overhead" in md and "Robustness probes: ASR" in md


def test_gpu_mode_runs_at_toy_size_on_the_cpu(tmp_path):
    dest = tmp_path / "bench"
    proc = run_cli(["harness.bench", "--gpu", "--arch", "toy", "--device", "cpu", "--ratio", "0.3", "--repeats", "1",
                    "--warmup", "5", "--window", "10", "--log-every", "5", "--dest", str(dest), *SMALL_WORLD, *SMALL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = json.loads((dest / "gpu-toy.json").read_text())["gpu"]
    assert set(g["training"]["per_step"]) == {"distill", "bilevel alternating K=10", "bilevel penalty K=10", "plain loop"}
    assert g["training"]["config"]["student_params_m"] < g["training"]["config"]["teacher_params_m"]
    m = g["mfu"]
    assert m["peak_bf16_flops"] is None  # no GPU: no peak to divide by
    assert all(v["tflops_per_s"] > 0 and v["mfu"] is None for v in m["variants"].values())
    assert "GPU: throughput" in (dest / "gpu-toy.md").read_text()


def test_a_paper_sd21_cell_runs_at_toy_size_beside_its_plan(tmp_path):
    """harness.bench.gpu_cell at the tests' size on the CPU: it writes the random-weight
    pipeline, COCO and artist folders, plans the cell, runs it through `python -m harness`
    and records both; its inputs and the cell go in a temporary folder that is removed."""
    dest, work = tmp_path / "bench", tmp_path / "work"
    work.mkdir()
    proc = run_cli(["harness.bench.gpu_cell", "--arch", "toy", "--device", "cpu", "--steps", "4", "--batch", "2",
                    "--images", "8", "--dest", str(dest), "--work", str(work)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((dest / "gpu-cell-toy.json").read_text())
    assert "sweep=paper_sd21" in result["overrides"] and "eval.backbone=none" in result["overrides"]
    plan, got = result["plan"], result["measured"]
    assert plan["wall_s"] > 0 and plan["train_macs"] > 0 and plan["calibration"]
    assert got["training_s"] > 0 and got["in_cell_s"] >= got["training_s"] + got["eval_s"]
    assert got["process_wall_s"] > got["in_cell_s"] and got["stages"]["finetune"]["steps_run"] == 4
    assert result["measured_over_planned"]["cell_s"] == pytest.approx(got["in_cell_s"] / plan["wall_s"])
    assert "| cell, in its process (s) |" in (dest / "gpu-cell-toy.md").read_text()
    assert not any(work.iterdir())


def test_a_gpu_cell_without_a_gpu_fails_in_one_line(tmp_path):
    proc = run_cli(["harness.bench.gpu_cell", "--dest", str(tmp_path / "b")], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --device=cuda asks for a GPU and torch sees none")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_the_sd21_architecture_is_the_published_one():
    """865,910,724 parameters: SD 2.1's UNet (stabilityai/stable-diffusion-2-1-base)."""
    from diffusers import UNet2DConditionModel

    from harness.bench.gpu import SD21_BASE_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724


@pytest.mark.parametrize("args, message", [
    (["--gpu", "--device", "cuda"], "--device=cuda asks for a GPU and torch sees none"),
    (["--sections", "training,nope"], "--sections=nope is not accepted: any of training, evaluation, cell, robustness"),
    (["--sweep-cells", "1"], "--sweep-cells=1 is not accepted: at least 2"),
    (["finetune.batch_size=abc"], "finetune.batch_size"),
])
def test_bad_requests_fail_in_one_line(args, message, tmp_path):
    # CUDA_VISIBLE_DEVICES="": torch sees no GPU here, whatever the machine has
    proc = run_cli(["harness.bench", *args, "--dest", str(tmp_path / "b")], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "b").exists()


def test_round_robin_advances_loops_in_turns_until_all_finish():
    from harness.bench.measure import round_robin

    order = []

    class Fake:
        def __init__(self, name, steps):
            self.name, self.steps, self.done = name, steps, 0

        @property
        def finished(self):
            return self.done >= self.steps

        def advance(self, n):
            k = min(n, self.steps - self.done)
            order.extend([self.name] * k)
            self.done += k
            return [float(self.done - i) for i in range(k)]

    out = round_robin({"a": Fake("a", 5), "b": Fake("b", 4), "c": Fake("c", 1)}, turn_steps=2)
    assert "".join(order) == "aabbcaabba"
    assert [len(out[n]) for n in "abc"] == [5, 4, 1]


@pytest.mark.numerics
def test_harness_loop_turns_resume_to_the_same_weights_as_one_run(context_for, tmp_path):
    """Advancing the harness's loop in turns (each a resumed fit) trains exactly as one fit."""
    from harness.bench.steps import HarnessLoop, method_stage, trainer_for, variant_context

    ctx = context_for(["method=bilevel", "method.K=2"])
    once = method_stage(variant_context(ctx, ctx.cfg, ctx.student))
    once.steps = 5
    trainer_for(ctx.cfg, ctx.device).fit(once, tmp_path / "once")
    turns_stage = method_stage(variant_context(ctx, ctx.cfg, ctx.student))
    loop = HarnessLoop(turns_stage, ctx.cfg, ctx.device, steps=5)
    durations = loop.advance(2) + loop.advance(2) + loop.advance(2)
    assert loop.finished and len(durations) == 5 and all(d > 0 for d in durations)
    for a, b in zip(once.ctx.student.parameters(), turns_stage.ctx.student.parameters()):
        assert torch.equal(a, b)


def test_noise_measurement_runs_at_tiny_size_and_reuses_its_pools(tmp_path):
    """python -m harness.bench.noise: disjoint sets of each size give a spread per metric, the
    recorded se beside it; a second run reads the generated pools back instead of sampling."""
    import json

    from harness.bench import noise

    args = ["--dest", str(tmp_path / "dest"), "--work", str(tmp_path / "work"), "--pool", "32", "--concept-pool", "16",
            "--sizes", "8,16", "--concept-sizes", "8", "--reference", "128", "--batch", "32",
            "--set", "finetune.steps=2", "--set", "eval.sample_steps=2"]
    assert noise.main(args) == 0
    first = json.loads((tmp_path / "dest" / "noise.json").read_text())
    for model in ("renders", "teacher", "distill (ratio 0.05, 2 steps)"):  # the trained student named as trained
        row = first["models"][model]["neutral"]["8"]
        assert row["fid"]["sets"] == 4 and row["fid"]["sd"] > 0 and row["fid"]["se"] > 0
        assert set(first["models"][model]["presence"]) == {"stripes", "outline"}
    assert "| 8 |" in (tmp_path / "dest" / "noise.md").read_text()
    pngs = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "pools").rglob("*.png")}
    assert noise.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "pools").rglob("*.png")} == pngs  # read back, not sampled again
    second = json.loads((tmp_path / "dest" / "noise.json").read_text())
    assert second["models"]["teacher"]["neutral"] == first["models"]["teacher"]["neutral"]


def test_what_a_ratio_leaves_depends_on_the_layout_not_the_weights(tmp_path, capsys):
    """python -m harness.bench.macs measures SD 2.1 on random weights: that is sound only if a
    ratio keeps the same MACs and parameters whatever the weights (torch-pruning prunes each
    layer by the ratio). Checked on the world's trained teacher against a random-weight UNet of
    its layout; the tool writes its JSON and refuses a ratio outside (0, 1) in one line."""
    from diffusers import UNet2DConditionModel

    from harness.bench import macs
    from harness.pruning import prune_unet

    trained = macs.unet_for("world")
    torch.manual_seed(1)
    random_weights = UNet2DConditionModel.from_config(trained.config)
    assert not torch.equal(next(trained.parameters()), next(random_weights.parameters()))
    a, b = (prune_unet(u, 0.1)[1] for u in (trained, random_weights))
    assert (a.macs_after, a.params_after) == (b.macs_after, b.params_after) and a.macs_after < a.macs_before
    # the tool traces a small latent (SD 2.1's own size ran out of memory): the same student
    m = macs.measure("world", [0.1], say=lambda *_: None)
    assert m["trace_size"] < m["latent_size"] and (m["ratios"][0]["macs"], m["ratios"][0]["params"]) == (a.macs_after, a.params_after)

    assert macs.main(["--arch", "toy", "--ratios", "0.3", "--dest", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "macs-toy.json").read_text())
    assert result["arch"] == "toy" and 0 < result["ratios"][0]["macs_share"] < 1
    capsys.readouterr()
    assert macs.main(["--ratios", "0.3,1.5", "--dest", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ratios=0.3,1.5 is not accepted: comma-separated numbers strictly between 0 and 1"]
    assert not (tmp_path / "no").exists()
