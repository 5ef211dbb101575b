"""Adversarial prompts against an erased model: optimise a k-token prefix of each concept prompt
so that the erased model draws the concept again.

    given  erased model S, original model T, concept prompts c_1..c_n, images x0_i = T's image for c_i
    z_i  ← k embeddings of random tokens                      (discrete: rows near the simplex's centre)
    repeat for `iterations` steps, all prompts at once (each its own z_i: the loss is a sum over i):
        t ~ U(t_range), ε ~ N(0, I), x_t = √ᾱ_t x0_i + √(1−ᾱ_t) ε
        unlearndiff: L_i = ‖target(x0_i, ε, t) − S(x_t, t, E([z_i; c_i]))‖²   (reconstruct T's image)
        p4d:         L_i = ‖T(x_t, t, E(c_i)) − S(x_t, t, E([z_i; c_i]))‖²     (match T's prediction)
        z ← Adam(z, ∇ Σ_i L_i)                               (discrete: then each row projected on the simplex)

`soft`: z is free embeddings, an upper bound on what any prompt can do (the continuous soft
prompt). `discrete` (UnlearnDiffAtk): z's rows are distributions over the vocabulary, the
forward pass uses the embedding of their argmax token and the gradient passes straight through
to the distribution, so the result is a prompt a user could type. Every draw comes from one
seeded generator: an attack is a function of (model, prompts, images, config).

UnlearnDiffAtk (Zhang et al., ECCV 2024) and P4D (Chin et al., ICML 2024): their defaults are
k = 5 tokens, Adam lr 1e-2 with weight decay 0.1; this harness draws t every iteration instead
of running 40 iterations per drawn timestep (the same objective in expectation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.losses import diffusion_target
from harness.robustness.prompts import encode, prefixed_ids, token_embeddings, word_ids

KINDS = ("soft", "discrete")
OBJECTIVES = ("unlearndiff", "p4d")


@dataclass(frozen=True)
class AttackConfig:
    kind: str = "soft"
    objective: str = "unlearndiff"
    tokens: int = 4
    iterations: tuple[int, ...] = (10, 20, 40)  # the prefix is handed back at each of these
    lr: float = 1e-2
    weight_decay: float = 0.1
    t_range: tuple[int, int] = (0, 1000)  # fractions of the schedule are scaled to its length
    seed: int = 0


@dataclass
class Prefix:
    """The attack's state at an iteration: soft embeddings (B, k, d), or the discrete tokens
    (B, k) with the typed prompts they make."""

    iteration: int
    loss: float
    embeddings: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


def project_to_simplex(p: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of p (…, V) onto the probability simplex (Duchi et al. 2008)."""
    sorted_p, _ = torch.sort(p, dim=-1, descending=True)
    cumulative = sorted_p.cumsum(-1) - 1
    ranks = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
    support = (sorted_p - cumulative / ranks) > 0
    rho = support.to(p.dtype).cumsum(-1).argmax(-1, keepdim=True)  # the last index where support holds
    theta = cumulative.gather(-1, rho) / (rho + 1).to(p.dtype)
    return (p - theta).clamp_min(0)


@contextmanager
def frozen(*modules):
    """Gradients reach the prefix only: every parameter of `modules` stops requiring them (and
    is restored after); the modules run in eval mode."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(m, m.training) for m in modules]
    for p, _ in saved:
        p.requires_grad_(False)
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def attack(parts, student, teacher, prompts: list[str], x0: torch.Tensor, cfg: AttackConfig) -> Iterator[Prefix]:
    """Run the attack on `prompts` (their original-model images `x0`, in the UNet's space) and
    yield the prefix at each of `cfg.iterations`."""
    if cfg.kind not in KINDS or cfg.objective not in OBJECTIVES:
        raise ValueError(f"attack kind {cfg.kind!r} / objective {cfg.objective!r}: kinds {KINDS}, objectives {OBJECTIVES}")
    device, n, k = parts.device, len(prompts), cfg.tokens
    g = torch.Generator().manual_seed(cfg.seed)
    ids = prefixed_ids(parts.tokenizer, prompts, k)
    allowed = word_ids(parts.tokenizer)
    table = token_embeddings(parts).detach()[allowed.to(device)]  # (A, d): the words a prefix may use
    start = torch.randint(len(allowed), (n, k), generator=g)
    if cfg.kind == "soft":
        param = table[start.to(device)].clone().requires_grad_(True)
    else:  # near the simplex's centre, its argmax the random start: Adam's steps of ~lr can flip
        # a row's argmax within a few iterations (from a one-hot row it takes ~1/lr of them)
        spread = torch.rand((n, k, len(allowed)), generator=g) / len(allowed)
        spread[torch.arange(n)[:, None], torch.arange(k)[None, :], start] += 1.0 / len(allowed)
        param = project_to_simplex(spread).to(device=device, dtype=table.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = parts.noise_scheduler
    steps = scheduler.config.num_train_timesteps
    lo, hi = max(0, cfg.t_range[0]), min(steps, cfg.t_range[1])
    x0 = x0.to(device)
    with torch.no_grad():
        plain = parts.encode_prompts(list(prompts)) if cfg.objective == "p4d" else None
    last = max(cfg.iterations)
    with frozen(student, teacher, parts.text_encoder):
        for it in range(1, last + 1):
            t = torch.randint(lo, hi, (n,), generator=g).to(device)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            x_t = scheduler.add_noise(x0, noise, t)
            if cfg.kind == "soft":
                prefix = param
            else:  # straight through: the argmax token's embedding forward, the distribution's gradient back
                hard = F.one_hot(param.argmax(-1), len(allowed)).to(param)
                prefix = (hard + param - param.detach()) @ table
            pred = student(x_t, t, encode(parts, ids, prefix)).sample
            if cfg.objective == "unlearndiff":
                target = diffusion_target(scheduler, x0, noise, t, parts.prediction_type)
            else:
                with torch.no_grad():
                    target = teacher(x_t, t, plain).sample
            per_prompt = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            per_prompt.sum().backward()
            optimizer.step()
            if cfg.kind == "discrete":
                with torch.no_grad():
                    param.copy_(project_to_simplex(param))
            if it in cfg.iterations:
                loss = float(per_prompt.detach().mean())
                if cfg.kind == "soft":
                    yield Prefix(it, loss, embeddings=param.detach().clone())
                else:
                    yield Prefix(it, loss, tokens=allowed[param.detach().argmax(-1).cpu()])
