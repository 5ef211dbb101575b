"""The paper's published numbers (shared/notes/paper.md: SD 2.1 at 512 px, artists Monet,
Picasso and Van Gogh, averaged; APTP pruning), for side-by-side rows next to real-scale cells.
These are the paper's results, not ours: tables print them in italics and never bold them."""

from __future__ import annotations

SOURCE = "Shirkavand et al., CVPR 2025, style removal (SD 2.1, 512 px; pruned with APTP, not torch-pruning)"

# Each method's own published row: its `published` (methods/). Here, the paper's other erasers.
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
