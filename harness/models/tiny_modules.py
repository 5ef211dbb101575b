"""The tiny model's modules, randomly initialised from config: the tokenizer (word-level, over the
world's vocabulary), the CLIP text encoder and the UNet.

No weights are read here; harness/models/tiny.py loads a teacher file into these modules, and
harness/models/tiny_weights.py asks `teacher_shapes` what such a file must hold."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

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


def random_modules(cfg: DictConfig):
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
        _, text_encoder, unet = random_modules(cfg)
    shapes = {f"unet.{k}": list(v.shape) for k, v in unet.state_dict().items()}
    shapes.update({f"text_encoder.{k}": list(v.shape) for k, v in text_encoder.state_dict().items()})
    return shapes
