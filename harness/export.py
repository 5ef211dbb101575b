"""python -m harness.export: a finished cell's pruned student as a folder diffusers can load.

    python -m harness.export 3f9a0c12de --to students/stripes-0.1    # a cell id under --out-dir
    python -m harness.export outputs/cells/3f9a0c12de --to students/stripes-0.1

The folder is a diffusers StableDiffusionPipeline layout (model_index.json, unet/,
text_encoder/, tokenizer/, scheduler/, vae/ for latent models) plus:
- unet/pruned_shapes.json: every tensor's shape after pruning (a UNet config cannot say it);
- load_student.py: the small loader (harness/student_loader.py, copied) that rebuilds the UNet;
- manifest.json: the sha256 of every file, checked by the loader;
- README.md: a model card with the cell's config, metrics, cost, commit and the paper's citation.

The scheduler is the one the harness evaluated the cell with (`eval.sampler`), so
`pipe(prompt, num_inference_steps=eval.sample_steps, guidance_scale=model.guidance,
generator=torch.Generator().manual_seed(seed))` gives the harness's own image for that seed.
The folder is built beside its destination and renamed into place: all of it or nothing."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.errors import fail

CITATION = """@inproceedings{shirkavand2025efficient,
  title={Efficient fine-tuning and concept suppression for pruned diffusion models},
  author={Shirkavand, Reza and Yu, Peiran and Gao, Shangqian and Somepalli, Gowthami and Goldstein, Tom and Huang, Heng},
  booktitle={Proceedings of the Computer Vision and Pattern Recognition Conference},
  pages={18619--18629},
  year={2025}
}"""


def find_cell(target: str, out_dir: Path) -> Path:
    """A cell folder from an id under `out_dir`/cells or a path; fails in one line."""
    path = Path(target)
    folder = path if (path / "config.yaml").is_file() else Path(out_dir) / "cells" / target
    if not (folder / "config.yaml").is_file():
        fail(f"cell {target!r}: no cell folder there or under {Path(out_dir) / 'cells'} (a cell id; python -m harness.jobs status --out-dir {out_dir} lists them)")
    if not (folder / "COMPLETED").exists():
        fail(f"cell {folder.name}: it has not completed (export a finished cell; python -m harness.jobs retry {folder.name} runs it again)")
    if not (folder / "student.safetensors").is_file():
        from omegaconf import OmegaConf

        method = OmegaConf.load(folder / "config.yaml").method.name
        fail(f"cell {folder.name}: method={method} trains no pruned student (export a cell of a method that prunes)")
    return folder


def _save_pipeline(parts, unet, scheduler, folder: Path) -> None:
    """A StableDiffusionPipeline folder, written part by part: the pipeline's constructor would
    rewrite the scheduler config it is given (see the loader), so none is built here."""
    import diffusers

    components = {"unet": unet, "scheduler": scheduler, "text_encoder": parts.text_encoder,
                  "tokenizer": parts.tokenizer, "vae": parts.vae}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
             "requires_safety_checker": False}
    for name, part in components.items():
        if part is None:  # pixel space: no VAE
            index[name] = [None, None]
            continue
        part.save_pretrained(folder / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def export(cell_dir: Path, dest: Path) -> Path:
    """Write the student of the finished cell in `cell_dir` to the new folder `dest`."""
    from omegaconf import OmegaConf

    from harness.files import dir_mode, file_mode, write_atomic
    from harness.models import build_parts
    from harness.pruning import load_pruned
    from harness.sampling import sampler_scheduler
    from harness.student_loader import MANIFEST, SHAPES_FILE

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one line per export, not a bar per file
    cfg = OmegaConf.load(cell_dir / "config.yaml")
    results = json.loads((cell_dir / "results.json").read_text())
    parts = build_parts(cfg.model)  # the teacher's text encoder, tokenizer, VAE and schedule
    unet, report = load_pruned(cell_dir / "student")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        _save_pipeline(parts, unet, sampler_scheduler(parts, cfg.eval.sampler), work)
        shapes = {k: list(v.shape) for k, v in unet.state_dict().items()}
        (work / "unet" / SHAPES_FILE).write_text(json.dumps({"shapes": shapes, "report": report.__dict__}, indent=1))
        shutil.copyfile(Path(__file__).with_name("student_loader.py"), work / "load_student.py")
        (work / "README.md").write_text(model_card(cell_dir, cfg, results))
        files = sorted(p for p in work.rglob("*") if p.is_file())
        manifest = {"cell": cell_dir.name, "sha256": {str(p.relative_to(work)): _sha256(p) for p in files}}
        write_atomic(work / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        for p in [work, *work.rglob("*")]:  # one permission policy (harness.files): safetensors and mkdtemp write private modes
            os.chmod(p, dir_mode() if p.is_dir() else file_mode())
        if dest.is_dir():
            dest.rmdir()  # empty (checked by main): the rename needs the name free
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_card(cell_dir: Path, cfg, results: dict) -> str:
    """README.md: what the student is, how to load it, how it was made and what it scored."""
    from omegaconf import OmegaConf

    from harness.method import get_method
    from harness.record import method_label
    from harness.tracking import flatten, summary_values

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = flatten(resolved)
    environment = json.loads((cell_dir / "environment.json").read_text()) if (cell_dir / "environment.json").exists() else {}
    git = environment.get("git", {})
    values = summary_values(results)
    pruning = results.get("pruning") or {}
    latent = cfg.model.name == "sd21"
    erase = list(cfg.concepts.erase) if cfg.get("concepts") else []
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(values.items())
                        if isinstance(v, (int, float)) and not k.startswith(("floor/", "se/")) and "/se/" not in k)
    load = (
        'images = pipe(prompt, num_inference_steps={steps}, guidance_scale={g}, generator=torch.Generator().manual_seed(43)).images'
        if latent else
        'x = pipe(prompt, num_inference_steps={steps}, guidance_scale={g}, generator=torch.Generator().manual_seed(43), output_type="latent").images\n'
        'images = (x.clamp(-1, 1) + 1) / 2  # pixel space: no VAE, the samples are the images'
    ).format(steps=cfg.eval.sample_steps, g=cfg.model.guidance)
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [pruned, concept-erasure, stable-diffusion]
---
# Pruned student {cell_dir.name}: {method_label(params)}

A UNet pruned by torch-pruning ({pruning.get('importance')} importance, ratio {pruning.get('ratio')}) from
the teacher `{cfg.model.get('path') or cfg.model.get('repo_id') or cfg.model.name}` ({cfg.model.name}), then fine-tuned by
`{method_label(params)}`{f", erasing {', '.join(erase)}" if erase and get_method(cfg.method.name).erases else ''}.
Parameters {pruning.get('params_after', 0) / 1e6:.3f} M of {pruning.get('params_before', 0) / 1e6:.3f} M;
MACs per image {pruning.get('macs_after', 0) / 1e6:.1f} M of {pruning.get('macs_before', 0) / 1e6:.1f} M.
Made by the experiment harness for "Efficient Fine-Tuning and Concept Suppression for Pruned
Diffusion Models" (CVPR 2025), cell `{cell_dir.name}`.

## Load

The pruned UNet has per-layer channel counts a `UNet2DConditionModel` config cannot express:
`load_student.py` (in this folder; needs torch, safetensors, diffusers, transformers) rebuilds it
and returns a `StableDiffusionPipeline`, after checking every file against `manifest.json`.

```python
import sys, torch
sys.path.insert(0, "<this folder>")
from load_student import load_student
pipe = load_student("<this folder>")
prompt = "..."
{load}
```

The scheduler is the one the harness evaluated with ({cfg.eval.sampler}, {cfg.eval.sample_steps} steps,
guidance {cfg.model.guidance}); with a generator seeded per image these are the harness's own images.

## Metrics

From the cell's evaluation (`eval` config below; `se/*` standard errors are in results.json).

| metric | value |
|---|---:|
{metrics}

## Provenance

- harness commit `{git.get('commit', 'unknown')}`{' (uncommitted changes)' if git.get('dirty') else ''};
  packages {', '.join(f'{k} {v}' for k, v in (environment.get('packages') or {}).items())}
- finished {results.get('finished_at', 'unknown')}; kernel set: {results.get('kernel_set', 'not recorded')}

## Config

```yaml
{OmegaConf.to_yaml(cfg, resolve=True).rstrip()}
```

## Citation

```bibtex
{CITATION}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", help="a cell id (a folder under <out-dir>/cells) or a cell folder")
    parser.add_argument("--to", required=True, type=Path, help="the folder to create (absent or empty)")
    parser.add_argument("--out-dir", default="outputs", type=Path, help="the run's out_dir (default: outputs)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.to.exists() and (not args.to.is_dir() or any(args.to.iterdir())):
        fail(f"--to={args.to} exists and is not an empty folder (name a new folder)")
    cell_dir = find_cell(args.cell, args.out_dir)
    from harness.errors import MissingInputError

    try:
        dest = export(cell_dir, args.to)
    except MissingInputError as error:  # the cell's teacher (model.path / model.weights) is gone
        fail(str(error))
    print(f"wrote {dest} (cell {cell_dir.name}); load it with: from load_student import load_student")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
