"""Metric math against independent computations, and the real backbones' missing-file errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from harness.errors import MissingInputError
from harness.metrics import clip_score, cmmd, cp_score, fid_from_features, presence_rate, style_similarity
from harness.metrics.backbones import ClipEmbedder, inception

RNG = np.random.default_rng(0)
REF = RNG.normal(size=(400, 16))


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def direct_mmd(x, y, sigma=10.0, scale=1000.0):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma**2)).mean()

    return scale * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_identical_sets_score_zero():
    assert abs(fid_from_features(REF, REF)) < 1e-6
    assert abs(cmmd(REF, REF)) < 1e-9


def test_a_shifted_set_scores_worse_than_a_perturbed_one():
    perturbed = REF + RNG.normal(scale=0.05, size=REF.shape)
    shifted = REF + 1.0
    assert fid_from_features(shifted, REF) > fid_from_features(perturbed, REF) > 0
    rotated = np.roll(REF, 3, axis=1) + 2.0  # CMMD sees directions: move them
    assert cmmd(rotated, REF) > cmmd(perturbed, REF) >= 0


def test_fid_agrees_with_an_independent_frechet_computation():
    other = RNG.normal(loc=0.3, scale=1.2, size=(300, 16))
    ours, theirs = fid_from_features(other, REF), scipy_fid(other, REF)
    assert abs(ours - theirs) / theirs < 1e-3


def test_fid_agrees_with_clean_fid_and_its_low_rank_form_with_the_full_one():
    """Our Fréchet distance against clean-fid's (scipy's sqrtm of Σ₁Σ₂) where Σ₁ has full rank;
    with fewer images than dimensions (Inception's 2048 features, a few images), the
    n-dimensional form against the d-dimensional one, exact in both."""
    from cleanfid.fid import frechet_distance as clean_fid_distance

    from harness.metrics.distribution import frechet_distance

    gen = RNG.normal(loc=0.2, scale=1.3, size=(500, 64))
    mu2, sigma2 = RNG.normal(scale=0.1, size=64), np.cov(RNG.normal(size=(700, 64)), rowvar=False)
    theirs = clean_fid_distance(gen.mean(0), np.cov(gen, rowvar=False), mu2, sigma2)
    assert frechet_distance(gen, mu2, sigma2) == pytest.approx(theirs, rel=1e-7)  # sqrtm of the non-symmetric product: ~1e-8 off
    few = gen[:12]  # rank 11 of 64
    low, full = frechet_distance(few, mu2, sigma2), frechet_distance(few, mu2, sigma2, low_rank=False)
    assert frechet_distance(few, mu2, sigma2, low_rank=True) == low
    # the d-dimensional form takes square roots of Σ₁'s zero eigenvalues as rounding leaves
    # them (~ε‖Σ₁‖): √ε ≈ 1.5e-8 relative, the precision the exact low-rank form does not lose
    assert low == pytest.approx(full, rel=1e-6) and low > 0
    assert np.isnan(frechet_distance(gen[:1], mu2, sigma2))


def test_fid_accepts_precomputed_reference_stats():
    other = RNG.normal(loc=0.3, size=(300, 16))
    stats = (REF.mean(0), np.cov(REF, rowvar=False))
    assert fid_from_features(other, stats) == pytest.approx(fid_from_features(other, REF))


def test_cmmd_agrees_with_the_formula_and_is_blocked():
    x, y = RNG.normal(size=(130, 8)), RNG.normal(loc=0.5, size=(70, 8))
    expected = direct_mmd(x, y)
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-9)
    assert cmmd(x, y, block=16) == pytest.approx(expected, rel=1e-9)  # many blocks, same sum


def test_prompt_and_style_scores():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert clip_score(img, txt) == pytest.approx(50.0)
    assert style_similarity(img, img) == pytest.approx(100.0)
    ref = torch.tensor([[1.0, 0.1], [1.0, 0.0]])
    assert cp_score(img, ref, txt) == pytest.approx(50.0)  # 2nd image is less similar than the reference's
    assert presence_rate(torch.tensor([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]]), 1) == pytest.approx(200 / 3)


def test_fid_on_folders_with_a_custom_extractor_matches_features(tmp_path):
    """clean-fid's folder pipeline with our own extractor (how the world computes FID)."""
    from cleanfid.fid import get_folder_features

    for i in range(6):
        Image.fromarray(RNG.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    weights = torch.randn(3 * 16 * 16, 5, generator=torch.Generator().manual_seed(0))
    extractor = lambda x: x.flatten(1) @ weights  # noqa: E731  (B,3,H,W) in 0..255
    feats = get_folder_features(str(tmp_path), extractor, num_workers=0, batch_size=4, device=torch.device("cpu"),
                                mode="clean", custom_fn_resize=lambda im: im.astype(np.float32), verbose=False)
    assert feats.shape == (6, 5)
    pixels = np.stack([np.asarray(Image.open(tmp_path / f"{i}.png"), dtype=np.float32).transpose(2, 0, 1).reshape(-1) for i in range(6)])
    direct = pixels @ weights.numpy()
    # Two float32 dot products of n = 768 terms, summed in other orders (torch's BLAS and numpy's,
    # each picking kernels by CPU): each is within n·u·Σ|x_i w_i| of the exact value (u = 2⁻²⁴),
    # so they differ by at most twice that. A relative tolerance fails where a sum cancels
    # (2.8e-4 relative on an AMD EPYC, 1e-4 allowed); the bound does not.
    n, u = pixels.shape[1], 2.0 ** -24
    bound = 2 * n * u * (np.abs(pixels) @ np.abs(weights.numpy())).max()
    assert np.abs(np.sort(feats, axis=0) - np.sort(direct, axis=0)).max() <= bound


def test_missing_inception_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # where torch hub keeps pytorch-fid's weights
    expected = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(MissingInputError, match=f"legacy_pytorch not found at {expected}"):
        inception("legacy_pytorch", torch.device("cpu"))
    monkeypatch.setattr("harness.metrics.backbones.inception_weights", lambda m: tmp_path / "inception-2015-12-05.pt")
    with pytest.raises(MissingInputError, match="clean not found at"):
        inception("clean", torch.device("cpu"))


def test_clean_fid_inception_is_read_from_the_users_hub_folder_never_a_shared_one(tmp_path, monkeypatch):
    """clean-fid reads its TorchScript Inception (code, not only weights) from /tmp, where anyone
    can plant it: the harness reads it from torch's hub folder and refuses a file or folder
    others can write."""
    from harness.metrics.backbones import _owned_by_us, inception_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert inception_weights("clean") == tmp_path / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    planted = tmp_path / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not torchscript")
    planted.chmod(0o644)
    planted.parent.chmod(0o755)
    _owned_by_us(planted)  # ours, writable by us only
    for target in (planted, planted.parent):
        target.chmod(0o777 if target.is_dir() else 0o666)
        with pytest.raises(MissingInputError, match="writable by others"):
            inception("clean", torch.device("cpu"))
        target.chmod(0o755 if target.is_dir() else 0o644)


def test_missing_clip_backbone_names_the_path(tmp_path):
    with pytest.raises(MissingInputError, match=f"CLIP backbone not found at {tmp_path}"):
        ClipEmbedder(tmp_path, torch.device("cpu"))


def test_evaluation_noise_estimators():
    """se/<metric> of a cell: sd/√n for means; Agresti–Coull for percentages (never 0); the
    jackknife se of FID tracks the spread over disjoint sets of the same distribution (never
    far below it) and shrinks with the set; CMMD's jackknife equals recomputing it without each
    group; its unbiased estimate drops the diagonal terms."""
    from harness.metrics import uncertainty as U

    assert U.mean_se([1.0, 3.0]) == pytest.approx(1.0)
    hits = np.array([True] * 3 + [False] * 7)
    assert U.proportion_se(hits) == pytest.approx(100 * np.sqrt((5 / 14) * (9 / 14) / 14))
    assert U.proportion_se(np.zeros(32, bool)) > 0  # no hit is still a measurement of 32 images

    rng = np.random.default_rng(1)
    pool, ref = rng.normal(size=(16384, 8)) + 0.1, rng.normal(size=(4000, 8))
    spread = {n: np.std([fid_from_features(pool[i:i + n], ref) for i in range(0, 16384, n)][:32], ddof=1) for n in (128, 512)}
    jack = {n: np.mean([U.fid_se(pool[i * n:(i + 1) * n], ref) for i in range(3)]) for n in (128, 512)}
    for n in (128, 512):
        assert 0.8 < jack[n] / spread[n] < 2.0, (n, jack[n], spread[n])
    assert jack[512] < jack[128]

    x, y = rng.normal(size=(60, 8)), rng.normal(size=(80, 8)) + 0.3
    xn, yn = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / 200.0)  # noqa: E731
    kxx, kyy = k(xn, xn), k(yn, yn)
    unbiased = 1000 * ((kxx.sum() - 60) / (60 * 59) + (kyy.sum() - 80) / (80 * 79) - 2 * k(xn, yn).mean())
    assert U.cmmd_unbiased(x, y) == pytest.approx(unbiased, rel=1e-9)
    assert cmmd(x, y) > U.cmmd_unbiased(x, y)  # the biased estimate carries the diagonal
    parts = U.groups(60)
    left_out = [cmmd(np.delete(x, p, axis=0), y) for p in parts]
    assert U.cmmd_se(x, y) == pytest.approx(U.jackknife_se(left_out), rel=1e-9)
