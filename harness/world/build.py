"""Train the Concept World's models once, from a seed, and write them with a manifest.

    python -m harness.world.build                      # the shipped recipe (CPU-hours; minutes on a GPU)
    python -m harness.world.build --scale tiny --out /tmp/w   # a few steps: the recipe's smoke test

Three parts, in order, each resumable from its checkpoint in <out>/.build/:
1. world CLIP: contrastive text/image towers (the text tower becomes the diffusion text encoder);
2. style descriptor: {plain, styles} classifier on degraded renders (the CSD analogue);
3. teacher: the tiny UNet trained on the whole world (plain and every style), EMA weights.
Every part trains through the harness's one loop (harness.trainer).

    python -m harness.world.build --only teacher --without stripes   # a floor teacher

A floor teacher is the same recipe on a pool that never shows one style (its scenes are left
out; the frozen text tower still knows the word): the model that never learned the concept,
against which the robustness probes measure an erased one (`eval.robustness.floor`)."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from harness.data.streams import BatchStream
from harness.env import cpu_name
from harness.files import write_atomic, write_via
from harness.data.world import RenderedSet
from harness.losses import diffusion_target, min_snr_weights, noisy_inputs, weighted_mse
from harness.trainer import Optim, Stage, Trainer, TrainConfig
from harness.weights import architecture_digest
from harness.world import WEIGHTS  # where the recipe writes by default
from harness.world.render import STYLES, sample_scenes
from harness.world.towers import STYLE_CLASSES, StyleDescriptor, WorldClip, degrade


@dataclass
class Recipe:
    seed: int = 0
    pool: int = 60_000  # rendered training scenes (25% plain, the rest spread over the styles)
    heldout: int = 2_000
    clip_steps: int = 1_000
    clip_batch: int = 256
    clip_lr: float = 2e-3
    style_steps: int = 1_500
    style_batch: int = 256
    style_lr: float = 2e-3
    teacher_steps: int = 3_000
    teacher_batch: int = 64
    teacher_lr: float = 1e-3
    teacher_warmup: int = 500
    ema: float = 0.999
    caption_dropout: float = 0.1
    gate_samples_per_style: int = 32
    gate_sampler_steps: int = 50
    checkpoint_every: int = 500


SCALES = {
    "full": Recipe(),
    "tiny": Recipe(pool=256, heldout=64, clip_steps=4, clip_batch=32, style_steps=4, style_batch=32, teacher_steps=4,
                   teacher_batch=8, teacher_warmup=0, gate_samples_per_style=2, gate_sampler_steps=3, checkpoint_every=2),
}


def world_pool(recipe: Recipe, resolution: int, n: int, stream: int, without: str | None = None) -> RenderedSet:
    styles = (None, None, *(s for s in STYLES if s != without))  # plain is 2 / (2 + #styles) of the pool
    return RenderedSet(sample_scenes(n, np.random.default_rng([recipe.seed, 100 + stream]), styles), resolution)


def floor_file(style: str) -> str:
    """The floor teacher's file name: the recipe without `style`'s scenes."""
    return f"teacher_without_{style}.safetensors"


def style_labels(dataset: RenderedSet) -> torch.Tensor:
    return torch.tensor([STYLE_CLASSES.index(s.style or "plain") for s in dataset.scenes])


class _Labelled(torch.utils.data.Dataset):
    """A rendered set whose items also carry their index (for labels)."""

    def __init__(self, base: RenderedSet):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitems__(self, idx):
        items = self.base.__getitems__(idx)
        for it, i in zip(items, idx):
            it["caption"] = (it["caption"], i)
        return items


class ClipStage(Stage):
    name = "world_clip"

    def __init__(self, clip: WorldClip, tokenizer, pool: RenderedSet, recipe: Recipe, alphas):
        self.clip, self.tokenizer, self.pool, self.recipe, self.alphas = clip, tokenizer, pool, recipe, alphas
        self.steps = recipe.clip_steps
        self._ids = {}

    def ids(self, captions):
        missing = [c for c in set(captions) if c not in self._ids]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length, return_tensors="pt")
            self._ids.update(zip(missing, enc.input_ids))
        return torch.stack([self._ids[c] for c in captions])

    def modules(self):
        return {"clip": self.clip}

    def optimizers(self):
        return {"clip": Optim(list(self.clip.parameters()), self.recipe.clip_lr, 1e-4, 100)}

    def streams(self):
        return {"pool": BatchStream(self.pool, self.recipe.clip_batch, self.recipe.seed + 1)}

    def loss(self, optimizer, next_batch, generator):
        batch = next_batch("pool")
        captions = batch["captions"]
        images = degrade(batch["images"], self.alphas, generator, p_noise=0.5, p_blur=0.2)
        img, txt = self.clip.embed_images(images), self.clip.embed_texts(self.ids(captions).to(images.device))
        logits = self.clip.logit_scale.exp().clamp(max=100) * img @ txt.T
        # Several images share a caption: every matching caption is a positive.
        index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        ids = torch.tensor([index[c] for c in captions], device=logits.device)
        same = (ids[:, None] == ids[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0).T, 1).mean())
        return loss, {}


class StyleStage(Stage):
    name = "style_descriptor"

    def __init__(self, model: StyleDescriptor, pool: RenderedSet, recipe: Recipe, alphas):
        self.model, self.pool, self.recipe, self.alphas = model, pool, recipe, alphas
        self.labels = style_labels(pool)
        self.steps = recipe.style_steps

    def modules(self):
        return {"style": self.model}

    def optimizers(self):
        return {"style": Optim(list(self.model.parameters()), self.recipe.style_lr, 1e-4, 100)}

    def streams(self):
        return {"pool": BatchStream(_Labelled(self.pool), self.recipe.style_batch, self.recipe.seed + 2)}

    def loss(self, optimizer, next_batch, generator):
        batch = next_batch("pool")
        labels = torch.tensor([i for _, i in batch["captions"]])
        images = degrade(batch["images"], self.alphas, generator)
        return F.cross_entropy(self.model(images), self.labels[labels].to(images.device)), {}


class TeacherStage(Stage):
    name = "teacher"

    def __init__(self, parts, pool: RenderedSet, recipe: Recipe):
        self.parts, self.pool, self.recipe = parts, pool, recipe
        self.unet = parts.unet
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.steps = recipe.teacher_steps

    def modules(self):
        return {"unet": self.unet, "ema": self.ema}

    def optimizers(self):
        r = self.recipe
        return {"unet": Optim(list(self.unet.parameters()), r.teacher_lr, 1e-4, r.teacher_warmup)}

    def streams(self):
        return {"pool": BatchStream(self.pool, self.recipe.teacher_batch, self.recipe.seed + 3)}

    def loss(self, optimizer, next_batch, generator):
        batch, parts = next_batch("pool"), self.parts
        drop = torch.rand(len(batch["captions"]), generator=generator) < self.recipe.caption_dropout
        captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]
        x0 = batch["images"]
        x_t, t, noise = noisy_inputs(parts.noise_scheduler, x0, generator)
        target = diffusion_target(parts.noise_scheduler, x0, noise, t, parts.prediction_type)
        pred = self.unet(x_t, t, parts.encode_prompts(captions)).sample
        weights = min_snr_weights(parts.noise_scheduler, t, 5.0, parts.prediction_type)
        return weighted_mse(pred, target, weights), {}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        decay = min(self.recipe.ema, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.unet.parameters()):
            e.lerp_(p, 1 - decay)


def built_for(file: str, cfg) -> str:
    """The architecture a file of this build was made for: a world metric backbone's, or (the
    teacher and every floor) the tiny model's of `cfg`."""
    from harness.metrics.world import FILES
    from harness.models.tiny_weights import backbone_architecture, teacher_architecture

    return backbone_architecture(file) if file in FILES else teacher_architecture(cfg)


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def style_accuracy(model: StyleDescriptor, dataset: RenderedSet) -> float:
    images = dataset.pixels.float() / 127.5 - 1
    predicted = torch.cat([model(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    return float((predicted == style_labels(dataset)).float().mean())


@torch.no_grad()
def teacher_style_rate(parts, unet, style: StyleDescriptor, recipe: Recipe, guidance: float) -> dict:
    """Fraction of teacher samples for styled prompts that the descriptor calls the prompted style,
    sampled at the world's guidance scale (`model.guidance`)."""
    from harness.sampling import sample

    rates = {}
    rng = np.random.default_rng([recipe.seed, 999])
    for name in STYLES:
        scenes = sample_scenes(recipe.gate_samples_per_style, rng, (name,))
        x, _ = sample(unet, parts, [s.caption() for s in scenes], recipe.gate_sampler_steps, guidance,
                      torch.Generator().manual_seed(recipe.seed))
        predicted = style(parts.decode(x)).argmax(1)
        rates[name] = float((predicted == STYLE_CLASSES.index(name)).float().mean())
    return rates


def build(out: Path, recipe: Recipe, device: torch.device, parts_wanted=("clip", "style", "teacher"),
          without: str | None = None) -> dict:
    from harness.models import build_parts
    from harness.models.tiny_weights import tiny_config

    out.mkdir(parents=True, exist_ok=True)
    work = out / ".build"
    cfg = tiny_config()
    torch.manual_seed(recipe.seed)
    parts = build_parts(cfg)
    alphas = parts.noise_scheduler.alphas_cumprod
    t0 = time.time()
    pool = world_pool(recipe, cfg.resolution, recipe.pool, 0, without)  # `without`: only the teacher trains on it
    heldout = world_pool(recipe, cfg.resolution, recipe.heldout, 1)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    run = dict(recipe=asdict(recipe), hardware={"device": str(device), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
               "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
               torch=torch.__version__)
    if without:  # a floor keeps its own run record; the shipped models' stays
        manifest.setdefault("floors", {})[without] = run
    else:
        manifest.update(run)
    log = lambda stage, step, values: print(json.dumps({"stage": stage, "step": step, **values}), flush=True)  # noqa: E731

    def write_manifest() -> None:  # after every part: an interrupted build keeps what it finished
        files = sorted(out.glob("*.safetensors"))
        manifest["checksums"] = {p.name: _checksum(p) for p in files}
        # what each file was built for: a config asking for that architecture skips building the
        # model to check the file's shapes (harness/models/tiny_weights.py)
        manifest["architectures"] = {p.name: architecture_digest(built_for(p.name, cfg)) for p in files}
        write_atomic(manifest_path, json.dumps(manifest, indent=1))

    trainer = Trainer(TrainConfig(seed=recipe.seed, checkpoint_every=recipe.checkpoint_every, log_every=50, precision="fp32"), device, log)

    clip = WorldClip(parts.text_encoder.requires_grad_(True)).to(device)
    if "clip" in parts_wanted:
        timing = trainer.fit(ClipStage(clip, parts.tokenizer, pool, recipe, alphas), work / "clip")
        write_via(out / "world_clip.safetensors", lambda tmp: save_file({k: v.contiguous().cpu() for k, v in clip.state_dict().items()}, str(tmp)))
        manifest["world_clip"] = {"steps": recipe.clip_steps, "seconds": timing["seconds_total"]}
        write_manifest()
    else:
        clip.load_state_dict(load_file(str(out / "world_clip.safetensors")))
    clip.eval().requires_grad_(False)

    style = StyleDescriptor().to(device)
    if "style" in parts_wanted:
        timing = trainer.fit(StyleStage(style, pool, recipe, alphas), work / "style")
        write_via(out / "style_descriptor.safetensors", lambda tmp: save_file({k: v.contiguous().cpu() for k, v in style.state_dict().items()}, str(tmp)))
        manifest["style_descriptor"] = {"steps": recipe.style_steps, "seconds": timing["seconds_total"]}
    else:
        style.load_state_dict(load_file(str(out / "style_descriptor.safetensors")))
    style.eval().cpu()
    manifest.setdefault("gates", {})["style_accuracy_heldout"] = style_accuracy(style, heldout)
    write_manifest()

    teacher_file, teacher_work = (floor_file(without), f"teacher_without_{without}") if without else ("teacher.safetensors", "teacher")
    if "teacher" in parts_wanted:
        parts.text_encoder = clip.text_encoder  # the world CLIP's text tower, frozen
        parts.to(device)
        stage = TeacherStage(parts, pool, recipe)
        timing = trainer.fit(stage, work / teacher_work)
        state = {f"unet.{k}": v for k, v in stage.ema.state_dict().items()}
        state.update({f"text_encoder.{k}": v for k, v in parts.text_encoder.state_dict().items()})
        write_via(out / teacher_file, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp)))
        record = {"steps": recipe.teacher_steps, "seconds": timing["seconds_total"]}
        if without:
            manifest["floors"][without].update(record)
        else:
            manifest["teacher"] = record
        parts.to(torch.device("cpu"))
        teacher = stage.ema.cpu().eval()
    elif (out / teacher_file).is_file():  # measure the gates of what was built
        shipped = load_file(str(out / teacher_file))
        parts.text_encoder = clip.text_encoder.cpu()
        parts.unet.load_state_dict({k[5:]: v for k, v in shipped.items() if k.startswith("unet.")})
        teacher = parts.unet.eval()
    else:
        teacher = None
    if teacher is not None:
        rates = teacher_style_rate(parts, teacher, style, recipe, cfg.guidance)
        sampler = {"sampler": "DDIM", "steps": recipe.gate_sampler_steps, "guidance": cfg.guidance,
                   "samples_per_style": recipe.gate_samples_per_style}
        if without:  # the left-out style's rate is the floor; the others say the recipe still worked
            manifest["floors"][without].update(style_rate_sampler=sampler, style_rate=rates)
        else:
            manifest["gates"]["teacher_style_rate_sampler"] = sampler
            manifest["gates"]["teacher_style_rate"] = rates
            manifest["gates"]["teacher_style_rate_mean"] = float(np.mean(list(rates.values())))
    manifest["wall_seconds_last_build"] = time.time() - t0
    write_manifest()
    return manifest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.world.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--without", default=None, metavar="STYLE",
                        help=f"train a floor teacher that never sees STYLE (one of {', '.join(STYLES)}); needs --only teacher")
    parser.add_argument("--only", default="clip,style,teacher",
                        help="comma list of parts to (re)train: clip,style,teacher; empty: train nothing, measure the gates")
    args = parser.parse_args(argv)
    recipe = replace(SCALES[args.scale], seed=args.seed)
    if args.teacher_steps is not None:
        recipe = replace(recipe, teacher_steps=args.teacher_steps)
    wanted = tuple(p for p in args.only.split(",") if p)
    unknown = set(wanted) - {"clip", "style", "teacher"}
    if unknown:
        print(f"error: --only={args.only} is not accepted: a comma list of clip, style, teacher", file=sys.stderr)
        return 2
    if args.without is not None and args.without not in STYLES:
        print(f"error: --without={args.without} is not a world style: one of {', '.join(STYLES)}", file=sys.stderr)
        return 2
    if args.without is not None and wanted != ("teacher",):
        print(f"error: --without={args.without} needs --only teacher (the towers are shared by every teacher), got --only={args.only}",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    manifest = build(args.out, recipe, device, wanted, args.without)
    print(json.dumps({"out": str(args.out), **({"floor": {args.without: manifest["floors"][args.without].get("style_rate")}}
                                                if args.without else {"gates": manifest.get("gates")})}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
