"""The Concept World: a procedural image-caption world small enough for a CPU."""

from harness.world.render import COLOURS, SHAPES, SIZES, STYLES, Scene, render, sample_scenes, vocabulary

__all__ = ["COLOURS", "SHAPES", "SIZES", "STYLES", "Scene", "render", "sample_scenes", "vocabulary"]
