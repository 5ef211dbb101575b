"""Prompt- and style-level scores on embeddings.

- CLIP score: 100 × cos(image, prompt), averaged (no clipping at 0).
- Style similarity (CSD): 100 × cos between the style embedding of each generated image and
  that of the reference image for the same prompt and seed (the un-erased distilled model's,
  as in the paper: so the reference model scores 100), averaged.
- CP score: % of concept prompts whose generated image is LESS similar (CLIP) to its prompt
  than the reference model's image for the same prompt and seed.
- Presence rate: % of images a style classifier assigns to the given concept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cos(a, b) -> torch.Tensor:
    return F.cosine_similarity(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), dim=-1)


def per_image_cos(a, b) -> torch.Tensor:
    """Cosine of each row pair (float64): the per-image values the scores below average."""
    return _cos(a, b)


def clip_score(image_emb, text_emb) -> float:
    return float(100.0 * _cos(image_emb, text_emb).mean())


def style_similarity(gen_style_emb, ref_style_emb) -> float:
    return float(100.0 * _cos(gen_style_emb, ref_style_emb).mean())


def cp_score(gen_image_emb, ref_image_emb, prompt_emb) -> float:
    less_similar = _cos(gen_image_emb, prompt_emb) < _cos(ref_image_emb, prompt_emb)
    return float(100.0 * less_similar.double().mean())


def presence_rate(class_logits, concept_index: int) -> float:
    predicted = torch.as_tensor(class_logits).argmax(dim=-1)
    return float(100.0 * (predicted == concept_index).double().mean())


def concept_hits(backbones, images, concept, domain: list) -> torch.Tensor:
    """Whether each image (uint8, N×3×H×W) shows `concept`: the style classifier's class where
    the backbones have one (the world's style descriptor: the detector behind presence), else
    CLIP zero-shot among the domain's concepts and their common anchor (real scale: which of
    "a painting by Vincent van Gogh", "... by Claude Monet", ..., "a painting" fits best)."""
    if backbones.classifies_styles:
        return torch.as_tensor(backbones.style_logits(images)).argmax(-1) == backbones.concept_index(concept.name)
    labels = [c.apply(c.anchor_prompt) for c in domain] + [concept.anchor_prompt]
    image_emb = F.normalize(torch.as_tensor(backbones.clip_images(images), dtype=torch.float64), dim=-1)
    text_emb = F.normalize(torch.as_tensor(backbones.clip_texts(labels), dtype=torch.float64), dim=-1)
    return (image_emb @ text_emb.T).argmax(-1) == [c.name for c in domain].index(concept.name)
