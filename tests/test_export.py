"""python -m harness.export: a finished cell's student, loaded by plain diffusers and the copied
loader in a fresh process, gives the harness's own images bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import export
from tests.conftest import REPO, SMALL, SMALL_WORLD, run_cli

# In a fresh process: the exported folder's own loader first (no harness on the path, and none
# imported), then the harness's sampler on the cell's own student, same prompts and seeds.
SCRIPT = """
import json, sys, torch
from safetensors.torch import save_file
folder, cell, cases, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
sys.path.insert(0, folder)
from load_student import load_student
pipe = load_student(folder)
exported = {}
for i, (prompt, seed, guidance, steps, latent) in enumerate(cases):
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed))
    if latent:  # the pipeline decodes and maps to [0, 1]
        exported[str(i)] = pipe(prompt, output_type="pt", **kw).images
    else:  # pixel space: the samples are the images, in [-1, 1]
        exported[str(i)] = (pipe(prompt, output_type="latent", **kw).images.clamp(-1, 1) + 1) / 2
harness_free = not any(m == "harness" or m.startswith("harness.") for m in sys.modules)
sys.path.insert(0, {repo!r})
from omegaconf import OmegaConf
from harness.models import build_parts
from harness.pruning import load_pruned
from harness.sampling import sample
cfg = OmegaConf.load(cell + "/config.yaml")
parts = build_parts(cfg.model)
student, _ = load_pruned(cell + "/student")
own = {}
for i, (prompt, seed, guidance, steps, latent) in enumerate(cases):
    x, _ = sample(student, parts, [prompt], steps, guidance, None, seeds=[seed], kind=cfg.eval.sampler)
    own[str(i)] = (parts.decode(x) + 1) / 2
save_file({**{"exported." + k: v.contiguous() for k, v in exported.items()}, **{"own." + k: v.contiguous() for k, v in own.items()}}, out)
print(json.dumps({"harness_free": harness_free}))
""".replace("{repo!r}", repr(str(REPO)))


def exported_and_own_images(folder: Path, cell: Path, cases: list, tmp_path: Path):
    out = tmp_path / "images.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(cell), json.dumps(cases), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"harness_free": True}
    images = load_file(str(out))
    return [(images[f"exported.{i}"], images[f"own.{i}"]) for i in range(len(cases))]


def erasing_cell(out: Path) -> Path:
    """A finished cell of the smoke sweep whose method prunes and erases (bilevel, penalty)."""
    for cell in sorted((out / "cells").iterdir()):
        text = (cell / "config.yaml").read_text() if (cell / "config.yaml").exists() else ""
        if (cell / "COMPLETED").exists() and "solver: penalty" in text and (cell / "student.safetensors").exists():
            return cell
    raise AssertionError("the smoke sweep has no finished bilevel penalty cell")


def test_an_exported_world_student_gives_the_harness_images_in_plain_diffusers(smoke_sweep, tmp_path, capsys):
    out, done = smoke_sweep
    assert done.returncode == 0, done.stderr[-2000:]
    cell = erasing_cell(out)
    dest = tmp_path / "students" / "stripes"
    assert export.main([cell.name, "--out-dir", str(out), "--to", str(dest)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {dest} (cell {cell.name})")
    assert not [p for p in dest.parent.iterdir() if p.name != "stripes"]  # nothing half-written beside it
    assert {"model_index.json", "load_student.py", "README.md", "manifest.json", "unet", "text_encoder", "tokenizer", "scheduler"} <= {p.name for p in dest.iterdir()}
    card = (dest / "README.md").read_text()
    results = json.loads((cell / "results.json").read_text())
    commit = json.loads((cell / "environment.json").read_text())["git"]["commit"]
    assert f"cell `{cell.name}`" in card and commit in card and "shirkavand2025efficient" in card
    assert f"| fid | {results['metrics']['fid']:.4g} |" in card and "solver: penalty" in card
    # a plain diffusers UNet config cannot hold the pruned shapes: that is why the loader exists
    from diffusers import UNet2DConditionModel

    with pytest.raises(Exception):
        UNet2DConditionModel.from_pretrained(dest / "unet")

    steps = json.loads(json.dumps(results["config"]["eval"]["sample_steps"]))
    cases = [["a large red circle with stripes", 3, results["config"]["model"]["guidance"], steps, False],
             ["a small blue square", 11, 3.0, steps, False]]  # with classifier-free guidance
    for exported, own in exported_and_own_images(dest, cell, cases, tmp_path):
        assert exported.shape == own.shape and torch.equal(exported, own)


def test_an_exported_latent_student_runs_the_vae_and_pndm(sd21_dir, tmp_path):
    """The SD 2.1 layout (VAE, v-prediction, PNDM as the authors evaluate) at toy size."""
    out = tmp_path / "run"
    done = run_cli(["harness", "method=distill", "model=sd21", f"model.path={sd21_dir}", "model.resolution=16",
                    "eval.sampler=pndm", "eval.backbone=world", *SMALL, *SMALL_WORLD, f"out_dir={out}"])
    assert done.returncode == 0, done.stderr[-2000:]
    cell = next(c for c in (out / "cells").iterdir() if (c / "student.safetensors").exists())
    dest = tmp_path / "student"
    dest.mkdir()  # an empty folder is fine
    assert export.main([str(cell), "--to", str(dest)]) == 0
    index = json.loads((dest / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["scheduler"] == ["diffusers", "PNDMScheduler"]
    cases = [["a painting of a harbour", 5, 7.5, 4, True]]
    for exported, own in exported_and_own_images(dest, cell, cases, tmp_path):
        assert exported.shape == own.shape == (1, 3, 16, 16) and torch.equal(exported, own)


def refuses(args: list[str], capsys, wanted: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export.main(args)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and wanted in lines[0], lines


def test_export_refuses_in_one_line_and_writes_nothing(smoke_sweep, tmp_path, capsys):
    out, _ = smoke_sweep
    teacher = next(c for c in (out / "cells").iterdir() if "name: teacher" in (c / "config.yaml").read_text())
    dest = tmp_path / "dest"
    cases = [
        (["nope123", "--out-dir", str(out)], "cell 'nope123': no cell folder there"),
        ([teacher.name, "--out-dir", str(out)], f"cell {teacher.name}: method=teacher trains no pruned student"),
    ]
    for args, wanted in cases:
        refuses([*args, "--to", str(dest)], capsys, wanted)
        assert not dest.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    refuses([erasing_cell(out).name, "--out-dir", str(out), "--to", str(tmp_path / "full")], capsys,
            "exists and is not an empty folder")
    # a cell whose teacher weights are gone: one line, and no folder (nor a temporary one) left
    import shutil

    moved = tmp_path / "cells" / "c1"
    shutil.copytree(erasing_cell(out), moved)
    config = (moved / "config.yaml").read_text().replace("weights: null", f"weights: {tmp_path / 'gone.safetensors'}", 1)
    (moved / "config.yaml").write_text(config)
    refuses([str(moved), "--to", str(tmp_path / "out" / "s")], capsys, "model.weights=")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_loader_refuses_an_altered_file(smoke_sweep, tmp_path):
    out, _ = smoke_sweep
    dest = tmp_path / "s"
    export.main([erasing_cell(out).name, "--out-dir", str(out), "--to", str(dest)])
    weights = dest / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    from harness.student_loader import load_student

    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors: sha256 .* differs from manifest.json"):
        load_student(dest)
