"""Bad input fails before any job starts: exit code 2, one line naming the key, the value and
what is accepted, and nothing written (no out_dir, no cell folder, no MLflow run)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

CASES = {
    "unknown method": (["method=nope"], "method=nope", "bilevel, distill, teacher, two_stage"),
    "unknown eraser": (["method=two_stage", "eraser=nope"], "eraser=nope", "concept_ablation, esd"),
    "unknown concept set": (["concepts=nope"], "concepts=nope", "stripes"),
    "unknown concept": (["method=bilevel", "concepts.erase=[nope]"], "concepts.erase='nope'", "stripes, checker"),
    "unknown sweep": (["-m", "sweep=nope"], "sweep=nope", "paper_table, paper_table_seeds, propagation, recovery, smoke"),
    "recovery step past training": (["eval.recovery_steps=[10,999]"], "eval.recovery_steps=[10, 999]", "steps between 1 and 300"),
    "recovery of the teacher": (["method=teacher", "eval.recovery_steps=[5]"], "eval.recovery_steps=[5]", "teacher trains nothing"),
    "unknown model": (["model=nope"], "model=nope", "sd21, tiny"),
    "ratio zero": (["pruning.ratio=0"], "pruning.ratio=0", "strictly between 0 and 1"),
    "ratio one in a sweep": (["-m", "pruning.ratio=0.3,1.0"], "pruning.ratio=1.0", "strictly between 0 and 1"),
    "K below one": (["method=bilevel", "method.K=0"], "method.K=0", "> 0"),
    "K below one in a sweep grid": (["-m", "method=bilevel", "method.K=5,0"], "method.K=0", "> 0"),
    "negative steps": (["finetune.steps=-5"], "finetune.steps=-5", "≥ 0"),
    "negative eraser steps": (["method=two_stage", "eraser.steps=-1"], "eraser.steps=-1", "≥ 0"),
    "negative learning rate": (["finetune.lr=-1e-4"], "finetune.lr=-0.0001", "> 0"),
    "negative upper learning rate": (["method=bilevel", "method.upper_lr=-1"], "method.upper_lr=-1", "> 0"),
    "unknown solver": (["method=bilevel", "method.solver=newton"], "method.solver='newton'", "alternating, penalty"),
    "missing sd21 weights": (["model=sd21", "model.path=/no/such/dir"], "model.path=/no/such/dir", "Stable Diffusion 2.1"),
    "zero guidance": (["model.guidance=0"], "model.guidance=0", "> 0"),
    "missing world teacher": (["model.weights=/no/teacher.safetensors"], "model.weights=/no/teacher.safetensors", "python -m harness.world.build"),
    "missing coco": (["data=coco", "data.root=/no/such/coco"], "data.root=/no/such/coco", "annotations"),
    "broken value": (["finetune.steps=abc"], "finetune.steps='abc'", "integer"),
    "unknown key": (["finetune.stepz=3"], "finetune.stepz", "+finetune.stepz"),
    "reproducible not a boolean": (["runtime.reproducible=maybe"], "runtime.reproducible='maybe'", "true or false"),
    "zero threads": (["runtime.threads=0"], "runtime.threads=0", "> 0"),
    "unknown evaluation sampler": (["eval.sampler=euler"], "eval.sampler='euler'", "ddim or pndm"),
    "unknown evaluation concepts": (["eval.concepts=some"], "eval.concepts='some'", "all, set or auto"),
    "no reference images": (["eval.reference_images=0"], "eval.reference_images=0", "> 0"),
    "unknown x_t sampler model": (["method=two_stage", "eraser.sampler_model=ema"], "eraser.sampler_model='ema'", "frozen, trained"),
    "unknown eraser layers": (["method=two_stage", "eraser.layers=conv"], "eraser.layers='conv'", "all, linear_conv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_before_anything_starts(case, tmp_path, capsys):
    """`harness.app.check` is what `python -m harness` runs before anything else."""
    from harness.app import check

    args, names, accepted = CASES[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        check([*args, f"out_dir={out}"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert names in lines[0] and accepted in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", ["unknown method", "ratio one in a sweep", "missing sd21 weights"])
def test_the_command_line_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    args, names, _ = CASES[case]
    out = tmp_path / "out"
    result = run_cli(["harness", *args, f"out_dir={out}"], timeout=120)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and names in lines[0], result.stderr[-2000:]
    assert not out.exists()


def _fails_in_one_line(args, tmp_path, capsys, *wanted):
    from harness.app import check

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        check([*args, f"out_dir={out}"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(w in lines[0] for w in wanted), lines[0]
    assert not out.exists()


def test_weights_are_verified_before_anything_starts(tmp_path, capsys):
    """A teacher or backbone with flipped bytes fails its manifest's sha256; a truncated file or
    weights for another architecture fail by their header: each in one line naming the file."""
    import shutil

    from harness.world.build import WEIGHTS

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    for name, key in (("teacher.safetensors", "model.weights"), ("world_clip.safetensors", "eval.weights")):
        shutil.copytree(WEIGHTS, copy, dirs_exist_ok=True)
        data = bytearray((copy / name).read_bytes())
        data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # 64 flipped bytes in the last tensor
        (copy / name).write_bytes(bytes(data))
        value = copy / name if key == "model.weights" else copy
        _fails_in_one_line([f"{key}={value}"], tmp_path, capsys, f"{key}={copy / name}", "sha256", "manifest.json")

    loose = tmp_path / "loose"  # no manifest beside it: the header still has to hold up
    loose.mkdir()
    (loose / "teacher.safetensors").write_bytes((WEIGHTS / "teacher.safetensors").read_bytes()[:100_000])
    _fails_in_one_line([f"model.weights={loose / 'teacher.safetensors'}"], tmp_path, capsys, "not a readable safetensors file")
    _fails_in_one_line(["model.unet.block_out_channels=[16,32]"], tmp_path, capsys, "model.weights=", "another architecture", "shape")
