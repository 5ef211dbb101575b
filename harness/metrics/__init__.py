"""The paper's metrics, one implementation each, used at both scales (real backbones on a
cluster, the Concept World's own backbones on a CPU). Every result records its backbone, mode,
scale and image count next to its value."""

from harness.metrics.distribution import cmmd, fid_from_features, frechet_stats
from harness.metrics.similarity import clip_score, cp_score, presence_rate, style_similarity

__all__ = ["clip_score", "cmmd", "cp_score", "fid_from_features", "frechet_stats", "presence_rate", "style_similarity"]
