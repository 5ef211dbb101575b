"""Stable-Diffusion-2.1-shaped pipeline folders with random weights, in diffusers' layout.

What loads through the real `model=sd21` path (harness/models/sd21.py) without the 5 GB
checkpoint: the tests write one at toy size, the GPU cell benchmark (harness/bench/gpu_cell.py)
at SD 2.1's published size. Step time and memory do not depend on weight values. The tokenizer
is CLIP's BPE class with a character-level vocabulary (the real merges file is a download):
a caption of n characters is n tokens, padded to `max_length` as SD 2.1's 77."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'-")
VOCAB = {tok: i for i, tok in enumerate(CHARS + [c + "</w>" for c in CHARS] + ["<|startoftext|>", "<|endoftext|>"])}


def write_pipeline(root: Path, unet: dict, vae: dict, text: dict, max_length: int, device: str = "cpu", seed: int = 0) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/ and a v-prediction scheduler/ under `root`, each
    with save_pretrained. `unet`, `vae`: diffusers configs; `text`: a CLIPTextConfig's sizes
    (its vocabulary is the tokenizer's). `device`: where the weights are initialised (random
    init of SD 2.1's 1.3 B parameters takes a minute on a few CPU cores, seconds on a GPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(root)
    torch.manual_seed(seed)
    for cls, config, sub in ((UNet2DConditionModel, unet, "unet"), (AutoencoderKL, vae, "vae")):
        with torch.device(device):
            model = cls(**config)
        model.to("cpu").save_pretrained(root / sub)
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(VOCAB))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=max_length).save_pretrained(tok_dir)
    sizes = {k: v for k, v in text.items() if k != "vocab_size"}
    config = CLIPTextConfig(vocab_size=len(VOCAB), eos_token_id=VOCAB["<|endoftext|>"], bos_token_id=VOCAB["<|startoftext|>"],
                            pad_token_id=VOCAB["<|endoftext|>"], **{**sizes, "max_position_embeddings": max_length})
    with torch.device(device):
        text_encoder = CLIPTextModel(config)
    text_encoder.to("cpu").save_pretrained(root / "text_encoder")
    # stabilityai/stable-diffusion-2-1's training scheduler
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction", clip_sample=False, steps_offset=1).save_pretrained(root / "scheduler")
    return root
