"""Loss terms shared by every method: the lower-level fine-tuning loss (BK-SDM style
distillation) and the concept-suppression targets (ESD negative guidance, concept ablation).

References: diffusers' train_text_to_image for min-SNR weighting; the authors' code for the
KD weights (1.0 diffusion, 2.0 output KD, 0.1 feature KD over the 9 UNet blocks)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from harness.distributed import batch_draw


def sample_timesteps(scheduler, n: int, generator: torch.Generator, device) -> torch.Tensor:
    high = scheduler.config.num_train_timesteps
    return batch_draw(lambda m: torch.randint(0, high, (m,), generator=generator), n).to(device)


def noisy_inputs(scheduler, x0: torch.Tensor, generator: torch.Generator):
    """x_t = forward-noised x0 at uniform t; returns (x_t, t, noise)."""
    noise = batch_draw(lambda m: torch.randn((m, *x0.shape[1:]), generator=generator), x0.shape[0]).to(x0.device, x0.dtype)
    t = sample_timesteps(scheduler, x0.shape[0], generator, x0.device)
    return scheduler.add_noise(x0, noise, t), t, noise


def diffusion_target(scheduler, x0, noise, t, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"model.prediction_type={prediction_type!r} is not accepted: epsilon or v_prediction")


def snr(scheduler, t: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(t.device)[t].float()
    return alphas / (1.0 - alphas)


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample weights of the min-SNR-γ strategy (Hang et al. 2023)."""
    s = snr(scheduler, t)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    return clipped / s if prediction_type == "epsilon" else clipped / (s + 1.0)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


@contextmanager
def record_block_outputs(unet):
    """Collect the outputs of the UNet's feature blocks during a forward (references only:
    no copies are made)."""
    from harness.pruning import feature_blocks  # (diffusers: not for a process that only checks a config)

    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, block in feature_blocks(unet).items():
        def hook(_m, _i, out, name=name):
            outputs[name] = out[0] if isinstance(out, tuple) else out
        hooks.append(block.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def feature_kd(student_feats: dict, teacher_feats: dict, kept: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the MSE between the student's block output and the teacher's
    output restricted to the channels pruning kept."""
    terms = []
    for name, s in student_feats.items():
        t = teacher_feats[name]
        if name in kept and t.shape[1] != s.shape[1]:
            t = t.index_select(1, kept[name].to(t.device))
        terms.append(F.mse_loss(s.float(), t.float()))
    return torch.stack(terms).mean()


def distillation_loss(student, teacher, scheduler, x0, cond, generator, kept, loss_cfg, prediction_type):
    """The lower-level fine-tuning loss L_ft on one batch:
    w_diff · minSNR-MSE(target) + w_out · MSE(teacher output) + w_feat · feature KD."""
    x_t, t, noise = noisy_inputs(scheduler, x0, generator)
    target = diffusion_target(scheduler, x0, noise, t, prediction_type)
    use_feat = loss_cfg.feature_kd > 0
    use_kd = loss_cfg.output_kd > 0 or use_feat
    with record_block_outputs(student) if use_feat else _nothing() as s_feats:
        pred = student(x_t, t, cond).sample
    weights = min_snr_weights(scheduler, t, loss_cfg.min_snr_gamma, prediction_type) if loss_cfg.min_snr_gamma else None
    l_diff = weighted_mse(pred, target, weights)
    logs = {"diffusion": l_diff.detach()}
    loss = loss_cfg.diffusion * l_diff
    if use_kd:
        with torch.no_grad(), (record_block_outputs(teacher) if use_feat else _nothing()) as t_feats:
            t_pred = teacher(x_t, t, cond).sample
        l_out = weighted_mse(pred, t_pred)
        logs["output_kd"] = l_out.detach()
        loss = loss + loss_cfg.output_kd * l_out
        if use_feat:
            l_feat = feature_kd(s_feats, t_feats, kept)
            logs["feature_kd"] = l_feat.detach()
            loss = loss + loss_cfg.feature_kd * l_feat
    return loss, logs


@contextmanager
def _nothing():
    yield {}


@torch.no_grad()
def guided_pair(model, x_t, t, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
    """model(x_t, ∅) and model(x_t, c) in ONE batched forward."""
    n = x_t.shape[0]
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).sample
    return out[:n], out[n:]


def esd_target(frozen, x_t, t, cond, uncond, eta: float) -> torch.Tensor:
    """ESD's negative-guidance target: F(x_t, ∅) − η (F(x_t, c) − F(x_t, ∅))."""
    e_uncond, e_cond = guided_pair(frozen, x_t, t, cond, uncond)
    return e_uncond - eta * (e_cond - e_uncond)


@torch.no_grad()
def ablation_target(frozen, x_t, t, anchor_cond) -> torch.Tensor:
    """Concept ablation's model-based target: the frozen model's prediction for the anchor prompt."""
    return frozen(x_t, t, anchor_cond).sample
