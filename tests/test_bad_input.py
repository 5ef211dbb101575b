"""Bad input fails before any job starts: exit code 2, one line naming the key, the value and
what is accepted, and nothing written (no out_dir, no cell folder, no MLflow run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, fails_in_one_line, run_cli

CASES = {
    "unknown method": (["method=nope"], "method=nope", "bilevel, distill, teacher, two_stage"),
    "unknown eraser": (["method=two_stage", "eraser=nope"], "eraser=nope", "concept_ablation, esd"),
    "unknown concept set": (["concepts=nope"], "concepts=nope", "stripes"),
    "unknown concept": (["method=bilevel", "concepts.erase=[nope]"], "concepts.erase='nope'", "stripes, checker"),
    "unknown sweep": (["-m", "sweep=nope"], "sweep=nope", "paper_table, paper_table_robust, paper_table_seeds, propagation, recovery, smoke"),
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
    "unknown evaluation sampler": (["eval.sampler=euler"], "eval.sampler='euler'", "ddim, pndm"),
    "unknown evaluation concepts": (["eval.concepts=some"], "eval.concepts='some'", "auto, all, set"),
    "no reference images": (["eval.reference_images=0"], "eval.reference_images=0", "> 0"),
    "unknown x_t sampler model": (["method=two_stage", "eraser.sampler_model=ema"], "eraser.sampler_model='ema'", "frozen, trained"),
    "unknown eraser layers": (["method=two_stage", "eraser.layers=conv"], "eraser.layers='conv'", "all, linear_conv"),
    # issue 14: every key checked before a job starts
    "unknown device": (["runtime.device=bogus"], "runtime.device='bogus'", "auto, cpu, cuda, cuda:<index>"),
    "negative workers": (["runtime.num_workers=-1"], "runtime.num_workers=-1", "an integer ≥ 0"),
    "checkpoints to keep not a number": (["runtime.keep_checkpoints=abc"], "runtime.keep_checkpoints='abc'", "an integer > 0"),
    "no checkpoints kept": (["runtime.keep_checkpoints=0"], "runtime.keep_checkpoints=0", "an integer > 0"),
    "caption dropout not a number": (["finetune.caption_dropout=abc"], "finetune.caption_dropout='abc'", "a number in [0, 1)"),
    "empty out_dir": (["out_dir="], "out_dir=''", "a writable folder"),
    "out_dir under /proc": (["out_dir=/proc/harness-out"], "out_dir='/proc/harness-out'", "pseudo file system"),
    "a key no method declares": (["++method.KK=5"], "method.KK=5", "no method declares method.KK (bilevel declares solver, K"),
    "a key no eraser declares": (["method=two_stage", "++eraser.etaa=1"], "eraser.etaa=1", "esd declares eta"),
    "an undeclared key": (["++finetune.new_knob=1"], "finetune.new_knob=1", "not a config key"),
    "float steps": (["finetune.steps=5.5"], "finetune.steps=5.5", "an integer ≥ 0"),
    "unknown artifact store": (["tracking.artifacts=s3"], "tracking.artifacts='s3'", "auto, out_dir"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_before_anything_starts(case, tmp_path, capsys):
    """`harness.app.check` is what `python -m harness` runs before anything else."""
    args, names, accepted = CASES[case]
    fails_in_one_line(args, tmp_path, capsys, names, accepted)


@pytest.mark.parametrize("case", ["unknown method", "ratio one in a sweep", "missing sd21 weights"])
def test_the_command_line_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    args, names, _ = CASES[case]
    out = tmp_path / "out"
    result = run_cli(["harness", *args, f"out_dir={out}"], timeout=120)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and names in lines[0], result.stderr[-2000:]
    assert not out.exists()


def test_out_dir_that_is_a_file_or_read_only_fails_before_anything_starts(tmp_path, capsys):
    """A regular file, a folder under a file, and a read-only folder (as a user without write
    permission sees it: root writes anywhere, so the check runs as `nobody` there)."""
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for value in (a_file, a_file / "out"):
        fails_in_one_line([f"out_dir={value}"], tmp_path, capsys, f"out_dir='{value}'", "a writable folder", "not a folder")
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)  # a user without write permission is refused by the mode bits
    mounted = os.geteuid() == 0  # root ignores them: a read-only mount, as on a shared cluster's read-only share
    if mounted:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"root without mount permission here: {done.stderr.strip()}")
    try:
        fails_in_one_line([f"out_dir={read_only / 'out'}"], tmp_path, capsys, "a writable folder", "Read-only file system" if mounted else "Permission denied")
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=False)


def test_weights_are_verified_before_anything_starts(tmp_path, capsys):
    """A teacher or backbone with flipped bytes fails its manifest's sha256; a truncated file or
    weights for another architecture fail by their header: each in one line naming the file."""
    import shutil

    from harness.world import WEIGHTS

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    for name, key in (("teacher.safetensors", "model.weights"), ("world_clip.safetensors", "eval.weights")):
        shutil.copytree(WEIGHTS, copy, dirs_exist_ok=True)
        data = bytearray((copy / name).read_bytes())
        data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # 64 flipped bytes in the last tensor
        (copy / name).write_bytes(bytes(data))
        value = copy / name if key == "model.weights" else copy
        fails_in_one_line([f"{key}={value}"], tmp_path, capsys, f"{key}={copy / name}", "sha256", "manifest.json")

    loose = tmp_path / "loose"  # no manifest beside it: the header still has to hold up
    loose.mkdir()
    (loose / "teacher.safetensors").write_bytes((WEIGHTS / "teacher.safetensors").read_bytes()[:100_000])
    fails_in_one_line([f"model.weights={loose / 'teacher.safetensors'}"], tmp_path, capsys, "not a readable safetensors file")
    fails_in_one_line(["model.unet.block_out_channels=[16,32]"], tmp_path, capsys, "model.weights=", "another architecture", "shape")


def test_checking_a_config_on_the_shipped_weights_builds_no_model(tmp_path):
    """The shipped manifest lists the architecture each file was built for, so checking a config
    that asks for it (checksums, headers, the cell's identity) imports neither diffusers nor
    transformers: a SLURM submission stays light. Another architecture builds the model to
    compare shapes, and fails (test above)."""
    code = ("import sys; from tests.conftest import compose; from harness.validate import validate; "
            "from harness.cell import cell_id; "
            f"cfg = compose(['method=two_stage'], {str(tmp_path)!r}); validate(cfg); cell_id(cfg); "
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
