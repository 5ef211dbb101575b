"""Distribution distances between image sets, on features from any backbone.

- FID: the Fréchet distance of clean-fid (`cleanfid.fid.frechet_distance`) between Gaussian
  fits of the two feature sets; at real scale the features are clean-fid's Inception in
  `legacy_pytorch` or `clean` mode.
- CMMD (Jayasumana et al. 2024): squared MMD with a Gaussian RBF kernel, σ = 10, scaled by
  1000, biased estimator (diagonal terms included), on L2-normalised CLIP embeddings. The
  kernel sums are accumulated block by block, so 30k × 30k pairs never sit in memory.
"""

from __future__ import annotations

import numpy as np
import torch


def frechet_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid_from_features(gen: np.ndarray, ref: np.ndarray | tuple[np.ndarray, np.ndarray]) -> float:
    """FID between generated features and reference features (or reference (mu, sigma))."""
    from cleanfid.fid import frechet_distance

    mu1, sigma1 = frechet_stats(gen)
    mu2, sigma2 = ref if isinstance(ref, tuple) else frechet_stats(ref)
    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, gamma: float, block: int) -> float:
    """Σ_ij exp(−γ ||x_i − y_j||²), computed block by block in float64."""
    total = 0.0
    y_sq = (y * y).sum(1)
    for i in range(0, len(x), block):
        xb = x[i : i + block]
        d2 = (xb * xb).sum(1)[:, None] + y_sq[None, :] - 2.0 * xb @ y.T
        total += torch.exp(-gamma * d2.clamp_min(0)).sum().item()
    return total


_SELF_SUMS: dict[tuple, float] = {}


def self_kernel_sum(y: torch.Tensor, gamma: float, block: int = 2048) -> float:
    """Σ_ij k(y_i, y_j) of a reference set, computed once per process and set: the reference
    (10,000 world renders, 30,000 COCO images) is the same for every cell and every metric."""
    import hashlib

    key = (hashlib.sha1(y.numpy().tobytes()).hexdigest(), tuple(y.shape), gamma)
    if key not in _SELF_SUMS:
        if len(_SELF_SUMS) > 8:
            _SELF_SUMS.clear()
        _SELF_SUMS[key] = _kernel_sum(y, y, gamma, block)
    return _SELF_SUMS[key]


def cmmd(gen: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, sigma: float = 10.0, scale: float = 1000.0,
         block: int = 2048, normalize: bool = True) -> float:
    x = torch.as_tensor(np.asarray(gen), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(ref), dtype=torch.float64)
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)
        y = y / y.norm(dim=1, keepdim=True)
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = _kernel_sum(x, x, gamma, block) / len(x) ** 2
    k_yy = self_kernel_sum(y, gamma, block) / len(y) ** 2
    k_xy = _kernel_sum(x, y, gamma, block) / (len(x) * len(y))
    return float(scale * (k_xx + k_yy - 2.0 * k_xy))
