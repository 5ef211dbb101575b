"""Evaluation noise of a cell's metrics: the standard error each value owes to the finite set
of images it was measured on (other seeds would have drawn other images).

- Means over images (CLIP score, CSD): sd of the per-image values / √n; percentages of images
  (presence, CP): the Agresti–Coull standard error of a proportion.
- FID and CMMD: a grouped jackknife over the generated images (32 groups, each left out once;
  the reference side is a fixed, much larger set). Not the bootstrap: resampling with
  replacement duplicates images, which moves FID's small-sample bias, and its sd came out 1.8×
  to 4.5× the real spread of FID over disjoint sets (Gaussian features, d = 8 and 64, n = 128
  to 1,024), where the jackknife's was 1.0× to 1.6× (conservative: it never fell below 0.9×).
`python -m harness.bench.noise` checks these against the spread of the metric over disjoint
image sets of the same model (docs/bench/noise.md)."""

from __future__ import annotations

import numpy as np
import torch

from harness.metrics.distribution import frechet_stats

GROUPS = 32  # jackknife groups: leave-one-group-out estimates


def groups(n: int, g: int = GROUPS, seed: int = 0) -> list[np.ndarray]:
    """The image indices split into g groups at random, a pure function of (n, g, seed)."""
    order = np.random.default_rng([seed, n]).permutation(n)
    return [part for part in np.array_split(order, min(g, n)) if len(part)]


def jackknife_se(estimates: list[float]) -> float:
    """√((g − 1)/g · Σ (θ_i − θ̄)²) over the g leave-one-group-out estimates θ_i."""
    th = np.asarray(estimates, dtype=np.float64)
    g = len(th)
    return float(np.sqrt((g - 1) / g * ((th - th.mean()) ** 2).sum())) if g > 1 else 0.0


def mean_se(values) -> float:
    """Standard error of a mean over images: sd / √n (0 for one image)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def proportion_se(hits) -> float:
    """Standard error of a percentage of images (presence, CP), in points, Agresti–Coull: a
    set with no hit (or all hits) still owes something to its size (Wald's sd/√n says 0)."""
    h = np.asarray(hits, dtype=bool)
    n = len(h)
    p = (h.sum() + 2.0) / (n + 4.0)
    return float(100.0 * np.sqrt(p * (1.0 - p) / (n + 4.0))) if n else 0.0


def fid_se(gen: np.ndarray, ref, g: int = GROUPS, seed: int = 0) -> float:
    from harness.metrics.distribution import frechet_distance

    gen = np.asarray(gen, dtype=np.float64)
    mu2, sigma2 = ref if isinstance(ref, tuple) else frechet_stats(ref)
    keep = np.ones(len(gen), dtype=bool)
    values = []
    for part in groups(len(gen), g, seed):
        keep[:] = True
        keep[part] = False
        values.append(frechet_distance(gen[keep], mu2, sigma2))
    return jackknife_se(values)


def cmmd_parts(gen, ref, sigma: float = 10.0, block: int = 2048, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(K_xx, per-image mean of k(x_i, ref), mean of k over ref × ref pairs: with the diagonal,
    or without it when `unbiased`) for normalised embeddings."""
    from harness.metrics.distribution import self_kernel_sum

    x = torch.as_tensor(np.asarray(gen), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(ref), dtype=torch.float64)
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = torch.exp(-gamma * torch.cdist(x, x).pow(2))
    k_xy = torch.cat([torch.exp(-gamma * torch.cdist(x[i : i + block], y).pow(2)).mean(1) for i in range(0, len(x), block)])
    total, m = self_kernel_sum(y, gamma, block), len(y)
    return k_xx, k_xy, (total - m) / (m * (m - 1)) if unbiased else total / m**2


def cmmd_se(gen, ref, scale: float = 1000.0, g: int = GROUPS, seed: int = 0) -> float:
    """The jackknife of the biased CMMD, reusing one kernel matrix: leaving a group out removes
    its rows and columns of K_xx and its entries of the per-image means against the reference."""
    k_xx, k_xy, k_yy = cmmd_parts(gen, ref)
    n = len(k_xy)
    row, total, cross = k_xx.sum(1), k_xx.sum().item(), k_xy.sum().item()
    values = []
    for part in groups(n, g, seed):
        i = torch.as_tensor(part)
        m = n - len(part)
        inner = total - 2 * row[i].sum().item() + k_xx[i][:, i].sum().item()
        values.append(scale * (inner / m**2 + k_yy - 2 * (cross - k_xy[i].sum().item()) / m))
    return jackknife_se(values)


def cmmd_unbiased(gen, ref, scale: float = 1000.0) -> float:
    """The unbiased estimate (diagonal terms left out of both sides' kernel means); the biased
    one (the paper's) exceeds it by about scale × (1 − mean k(x, x')) / n."""
    k_xx, k_xy, k_yy = cmmd_parts(gen, ref, unbiased=True)
    n = len(k_xy)
    off = (k_xx.sum() - k_xx.diagonal().sum()).item() / (n * (n - 1))
    return float(scale * (off + k_yy - 2 * k_xy.mean().item()))
