"""The tiny model: every part built offline from config, small enough for a CPU.

Pixel space, epsilon prediction by default: one training step is well under a second on two
cores. The tokenizer is a word-level tokenizer over the world's vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from harness.models.parts import DiffusionParts
from harness.models.tiny_weights import teacher_weights
from harness.world import vocabulary

SPECIAL = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]


def build_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=max_length,
    )


def _modules(cfg: DictConfig):
    """The tokenizer, text encoder and UNet of `cfg`, randomly initialised (fixed seed)."""
    tokenizer = build_tokenizer(cfg.text_encoder.max_length)
    torch.manual_seed(cfg.init_seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_encoder.hidden_size,
            intermediate_size=cfg.text_encoder.hidden_size * 2,
            num_hidden_layers=cfg.text_encoder.layers,
            num_attention_heads=cfg.text_encoder.heads,
            max_position_embeddings=cfg.text_encoder.max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    unet_config = OmegaConf.to_container(cfg.unet, resolve=True)
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution,
        cross_attention_dim=cfg.text_encoder.hidden_size,
        **unet_config,
    )
    return tokenizer, text_encoder, unet


def teacher_shapes(cfg: DictConfig) -> dict[str, list[int]]:
    """The tensor names and shapes a teacher file for `cfg` holds (built on the meta device:
    nothing is allocated)."""
    with torch.device("meta"):
        _, text_encoder, unet = _modules(cfg)
    shapes = {f"unet.{k}": list(v.shape) for k, v in unet.state_dict().items()}
    shapes.update({f"text_encoder.{k}": list(v.shape) for k, v in text_encoder.state_dict().items()})
    return shapes


def build_tiny(cfg: DictConfig) -> DiffusionParts:
    """Build every part from `cfg` (the `model` config group) with a fixed init seed."""
    tokenizer, text_encoder, unet = _modules(cfg)
    weights = teacher_weights(cfg)
    if weights is not None:
        _load_weights(weights, unet, text_encoder)
    scheduler_config = OmegaConf.to_container(cfg.scheduler, resolve=True)
    scheduler_config["prediction_type"] = cfg.prediction_type
    text_encoder.requires_grad_(False).eval()
    return DiffusionParts(
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=DDPMScheduler(**scheduler_config),
        sampler_config=scheduler_config,
        vae=None,
        prediction_type=cfg.prediction_type,
        resolution=cfg.resolution,
    )


def _load_weights(path: Path, unet, text_encoder) -> None:
    """Trained weights for the tiny model: one safetensors file with `unet.` and
    `text_encoder.` prefixed tensors."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
