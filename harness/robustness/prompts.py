"""Prompts with an adversarial prefix: k token slots right after the start token, filled either
with free embeddings (the soft attack) or with the embeddings of tokens (the discrete attack),
then the concept prompt. The text encoder runs as it always does; only the rows of its token
embedding output at the k slots are replaced (a forward hook), so the same code serves the
world's word-level CLIP and SD 2.1's OpenCLIP text encoder."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.errors import ConfigError


def special_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
            if i is not None}


def word_ids(tokenizer) -> torch.Tensor:
    """The token ids a prefix may use: every token of the vocabulary but the special ones."""
    special = special_ids(tokenizer)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def prefixed_ids(tokenizer, prompts: list[str], k: int, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) ids: [start, k prefix slots, the prompt's tokens, end, padding]. The slots hold
    `prefix_tokens` (B, k) or, for a soft prefix whose rows replace them, the first word id.
    Fails in one line when the prefix does not fit the encoder's length (the prompt would be cut)."""
    length = tokenizer.model_max_length
    rows = []
    filler = int(word_ids(tokenizer)[0])
    for b, prompt in enumerate(prompts):
        ids = tokenizer(prompt, truncation=False).input_ids  # [start, ..., end]
        if len(ids) + k > length:
            raise ConfigError("eval.robustness.tokens", k, f"at most {length - len(ids)}: the text encoder takes {length} tokens "
                              f"and {prompt!r} uses {len(ids)}")
        slots = prefix_tokens[b].tolist() if prefix_tokens is not None else [filler] * k
        row = [ids[0], *slots, *ids[1:]]
        rows.append(row + [tokenizer.pad_token_id] * (length - len(row)))
    return torch.tensor(rows)


@contextmanager
def prefix_rows(text_encoder, prefix: torch.Tensor):
    """Inside: the text encoder's token embeddings at positions 1..k are `prefix` (B, k, d),
    with gradients flowing to it."""
    embedding = text_encoder.get_input_embeddings()

    def replace(module, inputs, output):
        k = prefix.shape[1]
        return torch.cat([output[:, :1], prefix.to(output.dtype), output[:, 1 + k:]], dim=1)

    handle = embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def encode(parts, ids: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's text conditioning for `ids`, with the slots replaced by `prefix` when given
    (differentiable in `prefix`; the encoder's own weights stay frozen)."""
    ids = ids.to(parts.device)
    if prefix is None:
        return parts.text_encoder(ids)[0]
    with prefix_rows(parts.text_encoder, prefix):
        return parts.text_encoder(ids)[0]


def token_embeddings(parts) -> torch.Tensor:
    """(V, d): the text encoder's input embedding table."""
    return parts.text_encoder.get_input_embeddings().weight


def decode_prefix(tokenizer, tokens: torch.Tensor, prompt: str) -> str:
    """The typed prompt of a discrete prefix: its tokens as text, then the concept prompt."""
    words = tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()
    return f"{words} {prompt}".strip()
