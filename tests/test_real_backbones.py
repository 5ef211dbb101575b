"""Real-scale evaluation (`eval.backbone=real`) at toy size: CSD's checkpoint layout, the prepared
reference, every metric of a cell through the real backbones, and one-line stops for what is
missing. Inception's weights cannot be had here: a small stand-in takes its place in clean-fid's
pipeline, so everything around it runs for real."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from harness.errors import MissingInputError
from harness.metrics.backbones import CsdEmbedder
from harness.metrics.prepare import main as prepare
from harness.metrics.real import RealBackbones, check


def tiny_vision(seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                              image_size=28, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPVisionModel(config).eval()


def as_openai_visual(model) -> dict:
    """The tiny tower's weights in OpenAI CLIP's `visual.*` layout, as CSD's checkpoint stores them."""
    s = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    out = {"conv1.weight": s["embeddings.patch_embedding.weight"], "class_embedding": s["embeddings.class_embedding"],
           "positional_embedding": s["embeddings.position_embedding.weight"]}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = s[f"{ours}.{p}"]
    for i in range(model.config.num_hidden_layers):
        a, b = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}attn.in_proj_{p}"] = torch.cat([s[f"{a}self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[f"{b}attn.out_proj.{p}"] = s[f"{a}self_attn.out_proj.{p}"]
            out[f"{b}ln_1.{p}"], out[f"{b}ln_2.{p}"] = s[f"{a}layer_norm1.{p}"], s[f"{a}layer_norm2.{p}"]
            out[f"{b}mlp.c_fc.{p}"], out[f"{b}mlp.c_proj.{p}"] = s[f"{a}mlp.fc1.{p}"], s[f"{a}mlp.fc2.{p}"]
    return out


@pytest.fixture(scope="module")
def csd_checkpoint(tmp_path_factory):
    model = tiny_vision()
    head = torch.randn(64, 24)
    state = {f"module.backbone.{k}": v for k, v in as_openai_visual(model).items()}
    state["module.last_layer_style"], state["module.last_layer_content"] = head, torch.randn(64, 24)
    path = tmp_path_factory.mktemp("csd") / "checkpoint.pth"
    import argparse

    # as the released checkpoint: its training arguments ride along as an argparse.Namespace
    torch.save({"model_state_dict": state, "epoch": 1, "args": argparse.Namespace(lr=1e-4, arch="vit_large")}, path)
    return path, model, head


def test_csd_checkpoint_maps_onto_a_clip_tower(csd_checkpoint):
    path, model, head = csd_checkpoint
    csd = CsdEmbedder(path, torch.device("cpu"))
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    got = csd.images(images)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(pixel_values=csd._pixels(images)).pooler_output @ head, dim=-1)
    assert got.shape == (3, 24)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(3))
    # a different tower gives different embeddings: the weights were really loaded
    other = tiny_vision(seed=1)
    with torch.no_grad():
        unloaded = torch.nn.functional.normalize(other(pixel_values=csd._pixels(images)).pooler_output @ head, dim=-1)
    assert not torch.allclose(got, unloaded, atol=1e-3)


class _Payload:
    """Unpickling this runs code (os.system) — what a crafted checkpoint would do."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": {"last_layer_style": torch.zeros(2)}, "x": _Payload()}, path)
    with pytest.raises(MissingInputError, match="not loaded: it holds objects other than tensors") as info:
        CsdEmbedder(path, torch.device("cpu"))
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


def test_inception_weights_that_would_run_code_are_refused_without_running_them(tmp_path, monkeypatch):
    """clean-fid reads its legacy_pytorch Inception through torch.hub, which unpickles with
    weights_only=False: the harness reads the file weights-only instead."""
    from harness.metrics.backbones import PYTORCH_FID_WEIGHTS, inception

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / PYTORCH_FID_WEIGHTS
    path.parent.mkdir(parents=True)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(MissingInputError, match="not loaded: it holds objects other than tensors") as info:
        inception("legacy_pytorch", torch.device("cpu"))
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


def test_not_a_csd_checkpoint_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(MissingInputError, match="not a CSD checkpoint"):
        CsdEmbedder(path, torch.device("cpu"))
    with pytest.raises(MissingInputError, match="CSD checkpoint not found at"):
        CsdEmbedder(tmp_path / "none.pth", torch.device("cpu"))


class StandInInception(torch.nn.Module):
    """(B, 3, 299, 299) in 0..255 → (B, 12) pooled features, like clean-fid's extractor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 13, stride=13)

    def forward(self, x):
        assert x.shape[-2:] == (299, 299)
        return self.conv(x / 255.0).mean(dim=(2, 3))


@pytest.fixture
def real_setup(tmp_path, monkeypatch, tiny_clip_dir, csd_checkpoint):
    """Inception stand-in in place, a prepared reference of 12 photos, and eval.real pointing at it all."""
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr("harness.metrics.backbones.inception_weights", lambda mode: weights)
    monkeypatch.setattr("harness.metrics.backbones.inception", lambda mode, device: StandInInception())
    photos = tmp_path / "val2017"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(photos / f"{i:012d}.jpg")
    ref = tmp_path / "ref"
    assert prepare(["--images", str(photos), "--out", str(ref), "--resolution", "16", "--clip", str(tiny_clip_dir)]) == 0
    real = {"reference": str(ref), "fid_mode": "legacy_pytorch", "clip": str(tiny_clip_dir),
            "cmmd_clip": str(tiny_clip_dir), "csd": str(csd_checkpoint[0])}
    return OmegaConf.create(real)


def test_cell_evaluation_with_real_backbones(real_setup, context_for, tiny_world_weights):
    from harness.evaluation import eval_concepts
    from harness.image_eval import image_metrics

    overrides = ["eval.backbone=real", *[f"eval.real.{k}={v}" for k, v in real_setup.items()],
                 "eval.neutral_prompts=6", "eval.concept_prompts=3", "eval.concepts=set", "eval.sample_steps=2"]
    ctx = context_for(overrides)
    from harness.validate import validate

    validate(ctx.cfg)
    backbones = RealBackbones(ctx.cfg.eval.real)
    concepts = eval_concepts(ctx)
    metrics, info = image_metrics(ctx, ctx.student, backbones, concepts, reference=ctx.folder / "images")
    assert {"fid", "clip_score", "cmmd"} <= metrics.keys()
    assert all(np.isfinite(metrics[k]) for k in ("fid", "clip_score", "cmmd"))
    for c in concepts:
        # reference = this cell's own images (a distill cell is its own reference): CSD 100, CP 0
        assert metrics[f"csd/{c.name}"] == pytest.approx(100.0)
        assert metrics[f"cp/{c.name}"] == 0.0
        assert f"presence/{c.name}" not in metrics  # no classifier knows real artists
    assert info["fid"]["backbone"] == "inception-legacy_pytorch" and info["fid"]["scale"] == "real"
    assert info["fid"]["reference_images"] == 12 and info["cmmd"]["reference_images"] == 12
    assert info["clip_score"]["backbone"].startswith("clip-") and info["fid"]["images"] == 6
    # FID against the prepared statistics equals FID against the reference features directly
    from harness.metrics import fid_from_features
    from harness.imagesets import load_images
    from harness.metrics.backbones import inception_features

    gen = load_images(ctx.folder / "images" / "neutral").uint8()
    ref = load_images(real_setup.reference + "/images").uint8()
    direct = fid_from_features(inception_features(StandInInception(), "legacy_pytorch", gen),
                               inception_features(StandInInception(), "legacy_pytorch", ref))
    assert metrics["fid"] == pytest.approx(direct, rel=1e-6)


def test_real_backbones_fail_in_one_line_before_a_cell(real_setup, small, tmp_path):
    from harness.validate import validate

    def validate_with(**changes):
        real = {**real_setup, **changes}
        validate(small(["eval.backbone=real", *[f"eval.real.{k}={v}" for k, v in real.items()]]))

    validate_with()
    with pytest.raises(MissingInputError, match="eval.real.csd is not set"):
        validate_with(csd="null")
    with pytest.raises(MissingInputError, match="missing fid_clean.npz"):
        validate_with(fid_mode="clean")
    with pytest.raises(MissingInputError, match=r"eval.real.clip=/nope: not a transformers CLIP directory"):
        validate_with(clip="/nope")
    other = tmp_path / "other_clip"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(MissingInputError, match="CMMD embeddings were made with"):
        validate_with(cmmd_clip=str(other))
    assert json.loads((tmp_path / "ref" / "reference.json").read_text())["fid_mode"] == "legacy_pytorch"


def test_coco_defaults_to_real_backbones_and_names_what_is_unset(small):
    cfg = small(["data=coco"])
    assert cfg.eval.backbone == "real"
    with pytest.raises(MissingInputError, match="eval.real.reference is not set"):
        check(cfg.eval.real)


def test_metrics_cli_at_real_scale_uses_the_prepared_reference(real_setup, tmp_path, capsys):
    from harness.metrics.__main__ import main as metrics

    ref = real_setup.reference
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 120, (16, 16, 3), dtype=np.uint8)).save(gen / f"{i}.png")

    def run(*args):
        assert metrics([*args, "--gen", str(gen), "--scale", "real"]) == 0
        return json.loads(capsys.readouterr().out)

    with_stats = run("fid", "--ref", ref)
    with_images = run("fid", "--ref", ref + "/images")
    assert with_stats["reference_images"] == with_images["reference_images"] == 12
    assert with_stats["value"] == pytest.approx(with_images["value"], rel=1e-6) and with_stats["value"] > 0
    cmmd = run("cmmd", "--ref", ref, "--cmmd-clip", real_setup.cmmd_clip)
    assert cmmd["value"] == pytest.approx(run("cmmd", "--ref", ref + "/images", "--cmmd-clip", real_setup.cmmd_clip)["value"], rel=1e-5)
    assert run("csd", "--ref", str(gen), "--csd", real_setup.csd)["value"] == pytest.approx(100.0)
    assert metrics(["csd", "--gen", str(gen), "--ref", str(gen), "--scale", "real"]) == 2
    assert capsys.readouterr().err.strip() == "error: --csd is required for csd at --scale real: a local backbone"
    assert metrics(["fid", "--gen", str(gen), "--ref", ref, "--scale", "real", "--fid-mode", "clean"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --ref={ref}: prepared without fid_clean.npz (prepare it with --fid-mode clean)"


def test_robustness_probes_run_on_the_sd21_layout_with_the_real_detector(real_setup, context_for, tmp_path):
    """At real scale the probes are the same code: SD 2.1's layout (its CLIP BPE tokenizer and
    text encoder, VAE latents, v-prediction) with the concept detected by CLIP zero-shot among
    the domain's concept prompts; the discrete attack's found prompts end with the prompt they
    attacked and are text the tokenizer reads back."""
    import json

    from harness import robustness
    from harness.evaluation import metric_backbones
    from tests.conftest import write_sd21

    sd21_dir = write_sd21(tmp_path / "sd21", max_length=64)  # room for a world prompt in characters, and the prefix
    overrides = ["model=sd21", f"model.path={sd21_dir}", "model.resolution=16", "method=two_stage", "eval.backbone=real",
                 *[f"eval.real.{k}={v}" for k, v in real_setup.items()], "eval.sample_steps=2", "eval.concept_prompts=2",
                 "eval.robustness.enabled=true", "eval.robustness.prompts=2", "eval.robustness.tokens=3",
                 "eval.robustness.iterations=[1,2]", "eval.robustness.relearn_steps=2", "eval.robustness.relearn_every=1",
                 "eval.robustness.relearn_images=2"]
    ctx = context_for(overrides)
    metrics, info = robustness.run(ctx, ctx.student, metric_backbones(ctx.cfg.eval, ctx.device), None, None)
    assert info["robustness"]["backbone"].endswith("zero-shot")
    assert all(0 <= metrics[f"robust/{k}/stripes"] <= 100 for k in ("pre_asr", "asr_soft", "asr_discrete"))
    assert "robust/relearn_steps/stripes" in metrics and "robust/neighbour_presence/outline" in metrics
    entry = json.loads((ctx.folder / "robustness.json").read_text())["concepts"]["stripes"]
    for typed, prompt in zip(entry["discrete"]["found_prompts"], entry["prompts"]):
        assert typed.endswith(prompt) and len(typed) > len(prompt)
        assert ctx.parts.tokenizer(typed, truncation=False).input_ids[-1] == ctx.parts.tokenizer.eos_token_id
