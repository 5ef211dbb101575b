"""The Concept World: a procedural image-caption world small enough for a CPU."""

from pathlib import Path

from harness.world.render import COLOURS, SHAPES, SIZES, STYLES, Scene, render, sample_scenes, vocabulary

# The shipped world models (teacher, CLIP, style towers) and their manifest
WEIGHTS = Path(__file__).resolve().parent / "weights"

__all__ = ["WEIGHTS", "COLOURS", "SHAPES", "SIZES", "STYLES", "Scene", "render", "sample_scenes", "vocabulary"]
