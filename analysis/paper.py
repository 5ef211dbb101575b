"""The paper's published numbers (shared/notes/paper.md: SD 2.1 at 512 px, artists Monet,
Picasso and Van Gogh, averaged; APTP pruning), for side-by-side rows next to real-scale cells.
These are the paper's results, not ours: tables print them in italics and never bold them."""

from __future__ import annotations

SOURCE = "Shirkavand et al., CVPR 2025, style removal (SD 2.1, 512 px; pruned with APTP, not torch-pruning)"

# method label (harness.record.method_label) -> metric key -> value
STYLE_REMOVAL = {
    "teacher": {"clip_concept_erased": 34.44, "cp_erased": 44.0, "csd_erased": 87.91, "fid": 15.11, "clip_score": 31.60},
    "distill only": {"clip_concept_erased": 34.34, "cp_erased": 0.0, "csd_erased": 100.0, "fid": 22.19, "clip_score": 29.44},
    "two-stage + esd": {"clip_concept_erased": 30.78, "cp_erased": 84.0, "csd_erased": 61.45, "fid": 30.38, "clip_score": 29.02},
    "bilevel": {"clip_concept_erased": 26.28, "cp_erased": 97.6, "csd_erased": 39.04, "fid": 22.24, "clip_score": 29.19},
}
# Published rows with no counterpart among our methods, shown after them.
OTHER_ERASERS = {
    "two-stage + UCE": {"clip_concept_erased": 30.48, "cp_erased": 82.66, "csd_erased": 65.09, "fid": 26.63, "clip_score": 29.28},
    "two-stage + ConceptPrune": {"clip_concept_erased": 29.96, "cp_erased": 91.3, "csd_erased": 53.19, "fid": 27.86, "clip_score": 28.94},
}

# Recovery (COCO FID after 10k fine-tuning iterations) by MACs budget and lower-level loss.
RECOVERY_FID_10K = {
    ("55%", "diffusion only"): 46.5, ("55%", "KD only"): 36.2, ("55%", "diffusion + KD"): 32.5,
    ("80%", "diffusion only"): 26.1, ("80%", "KD only"): 27.9, ("80%", "diffusion + KD"): 22.7,
}


def published_style_row(label: str) -> dict | None:
    """The published row for one of our method labels (bilevel of any solver / eraser)."""
    if label.startswith("bilevel"):
        return STYLE_REMOVAL["bilevel"]
    return STYLE_REMOVAL.get(label)
