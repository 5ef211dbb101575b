"""The distillation step written by hand: plain PyTorch + diffusers + transformers, no harness
code. The yardstick of the harness's overhead: it does the math of the `distill` method's
step (min-SNR diffusion loss + output KD + feature KD over the UNet's blocks, caption
dropout, AdamW with linear warm-up, gradient clipping) and nothing else.

Inputs are the objects a researcher's script would hold: the student and teacher UNets, the
text encoder and tokenizer, the DDPM scheduler, a list of (images, captions) batches, and,
for feature KD, the teacher channels each student block kept after pruning."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F


def _blocks(unet) -> dict:
    out = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    out["mid_block"] = unet.mid_block
    out.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return out


def _hook_outputs(unet, store: dict) -> list:
    def make(name):
        def hook(_module, _inputs, output):
            store[name] = output[0] if isinstance(output, tuple) else output
        return hook
    return [block.register_forward_hook(make(name)) for name, block in _blocks(unet).items()]


def train(*args, **kwargs) -> None:
    """Run all the steps of `steps(...)`."""
    for _ in steps(*args, **kwargs):
        pass


def steps(student, teacher, text_encoder, tokenizer, scheduler, batches: Sequence[tuple[torch.Tensor, list[str]]],
          n: int, generator_for: Callable[[int], torch.Generator], kept: dict[str, torch.Tensor],
          lr=5e-4, warmup=20, weight_decay=0.0, caption_dropout=0.1, gamma=5.0,
          w_diffusion=1.0, w_output=2.0, w_feature=0.1, max_grad_norm=1.0, bf16: bool = False) -> Iterator[torch.Tensor]:
    """`n` distillation steps of `student` (epsilon prediction, pixel or latent inputs as
    given), yielding each step's loss (detached) as it ends. `generator_for(step)` gives the
    step's random generator; `bf16`: forwards under bf16 autocast (what the harness does on
    CUDA)."""
    device = next(student.parameters()).device
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    embeddings: dict[str, torch.Tensor] = {}  # the text encoder is frozen: one encoding per caption
    alphas = scheduler.alphas_cumprod.to(device)
    s_feats, t_feats = {}, {}
    hooks = _hook_outputs(student, s_feats) + _hook_outputs(teacher, t_feats)
    student.train()
    try:
        for step in range(n):
            g = generator_for(step)
            images, captions = batches[step % len(batches)]
            x0 = images.to(device)
            drop = torch.rand(len(captions), generator=g) < caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            new = [c for c in dict.fromkeys(captions) if c not in embeddings]
            if new:
                with torch.no_grad():
                    ids = tokenizer(new, padding="max_length", max_length=tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids.to(device)
                    for c, h in zip(new, text_encoder(ids)[0]):
                        embeddings[c] = h
            cond = torch.stack([embeddings[c] for c in captions])
            noise = torch.randn(x0.shape, generator=g).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=g).to(device)
            x_t = scheduler.add_noise(x0, noise, t)

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = student(x_t, t, cond).sample
            snr = alphas[t].float() / (1 - alphas[t].float())
            weight = torch.minimum(snr, torch.full_like(snr, gamma)) / snr
            l_diff = (F.mse_loss(pred.float(), noise.float(), reduction="none").flatten(1).mean(1) * weight).mean()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                t_pred = teacher(x_t, t, cond).sample
            l_out = F.mse_loss(pred.float(), t_pred.float())
            terms = []
            for name, s in s_feats.items():
                tf = t_feats[name]
                if tf.shape[1] != s.shape[1]:
                    tf = tf.index_select(1, kept[name])
                terms.append(F.mse_loss(s.float(), tf.float()))
            loss = w_diffusion * l_diff + w_output * l_out + w_feature * torch.stack(terms).mean()

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
            optimizer.step()
            s_feats.clear()  # drop this step's activations (and the student's graph) now
            t_feats.clear()
            yield loss.detach()
    finally:
        for h in hooks:
            h.remove()
