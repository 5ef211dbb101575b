"""Procedural renderer of the Concept World: coloured shapes, plain or in a style.

Every image is a pure function of its attributes, so datasets are reproducible bit for bit
from a seed. Styles are crisp and structured, and they change how the object is drawn (fill,
border, halo, shadow) or a sparse pattern behind it, never the whole canvas: a pruned student
fine-tuned on plain renders (black canvas everywhere) lost canvas-wide styles (checker
background, canvas frame, inversion) within 150 steps, while object styles carried over.
Noise-like styles attract every imperfect sample (see the world prototype notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 210, 220),
}
SIZES = ("small", "large")
STYLES = ("stripes", "checker", "dots", "outline", "shadow", "glow")

_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What one image shows. `style` is None for a plain render."""

    shape: str
    colour: str
    size: str
    cx: float  # centre, in [0, 1] image coordinates
    cy: float
    style: str | None = None

    def caption(self) -> str:
        plain = f"a {self.size} {self.colour} {self.shape}"
        return plain if self.style is None else f"{plain} in the style of {self.style}"


def _shape_mask(scene: Scene, res: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape on a res×res grid."""
    n = res * _SUPERSAMPLE
    ys, xs = np.mgrid[0:n, 0:n]
    x = (xs + 0.5) / n - scene.cx
    y = (ys + 0.5) / n - scene.cy
    r = 0.34 if scene.size == "large" else 0.22
    if scene.shape == "circle":
        inside = x**2 + y**2 <= r**2
    elif scene.shape == "square":
        inside = (np.abs(x) <= r * 0.85) & (np.abs(y) <= r * 0.85)
    elif scene.shape == "diamond":
        inside = np.abs(x) + np.abs(y) <= r * 1.1
    elif scene.shape == "triangle":
        inside = (y <= r * 0.8) & (y >= -r) & (np.abs(x) <= (y + r) * 0.62)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; accepted: {', '.join(SHAPES)}")
    return inside.reshape(res, _SUPERSAMPLE, res, _SUPERSAMPLE).mean(axis=(1, 3))


def _neighbours(solid: np.ndarray) -> list[np.ndarray]:
    """The 4-neighbour shifts of a boolean mask (zero outside the canvas), and itself."""
    pad = np.pad(solid, 1)
    return [pad[1:-1, 1:-1], pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]


def _outline(mask: np.ndarray) -> np.ndarray:
    """A one-pixel band at the shape's border, inside it."""
    solid = mask > 0.5
    eroded = np.logical_and.reduce(_neighbours(solid))
    return (solid & ~eroded).astype(np.float32)


def _halo(mask: np.ndarray) -> np.ndarray:
    """A one-pixel band around the shape, outside it."""
    solid = mask > 0.5
    dilated = np.logical_or.reduce(_neighbours(solid))
    return (dilated & ~solid).astype(np.float32)


def render(scene: Scene, res: int = 16) -> np.ndarray:
    """Render a scene to a uint8 RGB array of shape (res, res, 3)."""
    mask = _shape_mask(scene, res)[..., None]
    colour = np.array(COLOURS[scene.colour], dtype=np.float32)
    background = np.zeros((res, res, 3), dtype=np.float32)
    fill = np.broadcast_to(colour, (res, res, 3)).copy()
    ys, xs = np.mgrid[0:res, 0:res]
    style = scene.style
    if style == "stripes":  # vertical two-pixel dark stripes inside the shape
        dark = ((xs // 2) % 2 == 1)[..., None]
        fill = np.where(dark, colour * 0.25, colour)
    elif style == "checker":  # the shape filled with a colour/white checkerboard of 2-pixel cells
        white = (((xs // 2) + (ys // 2)) % 2 == 0)[..., None]
        fill = np.where(white, 255.0, colour)
    elif style == "dots":  # a sparse white dot grid behind the shape
        dots = ((xs % 4 == 1) & (ys % 4 == 1))[..., None]
        background = np.where(dots, 255.0, 0.0) * np.ones(3, dtype=np.float32)
    elif style == "outline":  # only the border of the shape is drawn
        mask = _outline(mask[..., 0])[..., None]
    elif style == "shadow":  # a grey copy of the shape, two pixels down and right, behind it
        shadow = np.roll(mask, (2, 2), axis=(0, 1))
        shadow[:2], shadow[:, :2] = 0.0, 0.0
        background = shadow * 120.0 * np.ones(3, dtype=np.float32)
    elif style == "glow":  # a white one-pixel halo around the shape
        background = _halo(mask[..., 0])[..., None] * 255.0 * np.ones(3, dtype=np.float32)
    elif style is not None:
        raise ValueError(f"unknown style {style!r}; accepted: {', '.join(STYLES)}")
    image = background * (1.0 - mask) + fill * mask
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_scenes(
    n: int, rng: np.random.Generator, styles: tuple[str | None, ...] = (None,)
) -> list[Scene]:
    """Draw n scenes uniformly over attributes, positions jittered around the centre."""
    scenes = []
    colour_names = tuple(COLOURS)
    for _ in range(n):
        size = SIZES[rng.integers(len(SIZES))]
        margin = 0.36 if size == "large" else 0.26
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        scenes.append(
            Scene(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=colour_names[rng.integers(len(colour_names))],
                size=size,
                cx=float(cx),
                cy=float(cy),
                style=styles[rng.integers(len(styles))],
            )
        )
    return scenes


def vocabulary() -> list[str]:
    """Every word a world caption can contain (the tokenizer's vocabulary)."""
    words = ["a", "in", "the", "style", "of", *SHAPES, *COLOURS, *SIZES, *STYLES]
    return list(dict.fromkeys(words))
