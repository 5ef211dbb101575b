"""Model parts: the tiny model offline, and SD 2.1's loading path (local files only)."""

from __future__ import annotations

import pytest
import torch

from harness.errors import MissingInputError
from harness.models import build_parts
from harness.models.sd21 import locate
from harness.trainer import Trainer, TrainConfig
from methods.distill import FinetuneStage
from tests.conftest import compose


def test_tiny_model_builds_offline_and_encodes_world_captions():
    parts = build_parts(compose().model)
    emb = parts.encode_prompts(["a large red circle in the style of stripes", ""])
    assert emb.shape == (2, 16, 64)
    ids = parts.tokenizer(["a red circle"]).input_ids[0]
    assert parts.tokenizer.unk_token_id not in ids


def test_sd21_missing_weights_name_the_path(tmp_path):
    cfg = compose(["model=sd21", f"model.path={tmp_path}"]).model
    with pytest.raises(MissingInputError, match=f"model.path={tmp_path}: no Stable Diffusion 2.1 weights"):
        locate(cfg)


def test_sd21_hub_cache_lookup_is_local_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    cfg = compose(["model=sd21", "model.path=null"]).model
    with pytest.raises(MissingInputError, match="models--stabilityai--stable-diffusion-2-1"):
        locate(cfg)


def test_sd21_layout_loads_and_trains_in_latent_space_with_v_prediction(sd21_dir, context_for, tmp_path):
    """The real-scale path (VAE latents, v-prediction, CLIP tokenizer) through the same loop."""
    ctx = context_for(["model=sd21", f"model.path={sd21_dir}", "model.resolution=16", "eval.concepts=set"])
    assert ctx.parts.vae is not None and ctx.parts.prediction_type == "v_prediction"
    assert ctx.parts.latent_shape(2) == (2, 4, 8, 8)
    stage = FinetuneStage(ctx)
    stage.steps = 3
    Trainer(TrainConfig(progress=False), torch.device("cpu")).fit(stage, tmp_path / "ckpt")
    from harness.sampling import sample

    x, _ = sample(ctx.student, ctx.parts, ["a red circle"], 2, 3.0, torch.Generator().manual_seed(0))
    assert ctx.parts.decode(x).shape == (1, 3, 16, 16)
