"""Pareto fronts and their hypervolume, and the bootstrap interval over evaluation noise:
the arithmetic of `python -m analysis.tune`, on plain lists (all objectives minimised)."""

from __future__ import annotations

import numpy as np


def front_indices(values: list[list[float]]) -> list[int]:
    """Indices of the points no other point weakly beats on every coordinate and strictly on
    one (all minimised); of equal points the first is kept."""
    keep = []
    for i, p in enumerate(values):
        dominated = any(all(q[k] <= p[k] for k in range(len(p))) and (any(q[k] < p[k] for k in range(len(p))) or j < i)
                        for j, q in enumerate(values) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def hypervolume(points: list[list[float]], ref: list[float]) -> float:
    """The volume the (minimised) points dominate below `ref`: slices along the last
    coordinate, each the (d−1)-dimensional hypervolume of the points at or below it."""
    pts = [list(p) for p in points if all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += (upper - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


PERCENT = ("presence", "cp", "csd")  # metric families in [0, 100]
NON_NEGATIVE = ("fid", "cmmd", "heldout_mse")


def redraw(rng, metric: str, value: float, se: float | None) -> float:
    """`value` + N(0, se²), kept inside the metric's range: a presence of 0 with an se of 0.5
    cannot be redrawn as −0.5 (that would credit a front with suppression no model can have
    and push the interval above the value it is the interval of)."""
    if not se:
        return value
    drawn = value + rng.normal(0.0, se)
    family = metric.split("/")[0]
    if family in PERCENT:
        return min(max(drawn, 0.0), 100.0)
    if family in NON_NEGATIVE:
        return max(drawn, 0.0)
    return drawn


def interval(estimate: float, samples: np.ndarray) -> tuple[float, float]:
    """The basic bootstrap interval: the 2.5–97.5 percentiles of `samples` reflected about `estimate`."""
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(2 * estimate - hi), float(2 * estimate - lo)


def coverage(studies: int = 200, boots: int = 300, seed: int = 1) -> dict[str, float]:
    """How often each interval covers the true hypervolume, on synthetic two-objective studies
    shaped like ours: 24 trials, FID 1.5–8 with se 0.3, presence falling with FID plus a dominated
    spread, se 1.5; the true values known, the recorded ones those plus noise."""
    rng = np.random.default_rng(seed)
    ref, se = [10.0, 60.0], np.array([0.3, 1.5])
    covered = {"basic": 0, "percentile": 0}
    for _ in range(studies):
        fid = rng.uniform(1.5, 8.0, 24)
        true = np.stack([fid, np.clip(60 * np.exp(-(fid - 1.5) / 2) + rng.uniform(0, 20, 24), 0, 100)], 1)
        truth = _hv(true, ref)
        recorded = np.clip(true + rng.normal(0, 1, true.shape) * se, 0, 100)
        estimate = _hv(recorded, ref)
        samples = np.array([_hv(np.clip(recorded + rng.normal(0, 1, true.shape) * se, 0, 100), ref) for _ in range(boots)])
        lo, hi = interval(estimate, samples)
        covered["basic"] += lo <= truth <= hi
        plo, phi = np.percentile(samples, [2.5, 97.5])
        covered["percentile"] += plo <= truth <= phi
    return {k: v / studies for k, v in covered.items()}


def _hv(points: np.ndarray, ref: list[float]) -> float:
    pts = points.tolist()
    return hypervolume([pts[i] for i in front_indices(pts)], ref)
