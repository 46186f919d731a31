"""Shape outlines in a unit box and deterministic anti-aliased rasterisation.

Every shape is an axis-aligned polygon stretched to fill its box exactly (the box is its bounding
box), so a shape is fully described by (class, box). The scorer relies on this: it fits a box to a
detected blob from its image moments under each class hypothesis and compares the blob with that
class's template rendered by the same code (`unimodal.shapes.detect`).

Anti-aliasing: each pixel's coverage is measured on an ss x ss grid of sub-pixel samples (numpy,
no PIL drawing), so edge pixels are linear mixes of background and object colour, and the result
depends only on the inputs (no randomness, no platform-specific filter).
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1)


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(0), points.max(0)
    return (points - lo) / (hi - lo)


def _circle() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    return _normalise(np.stack([np.cos(t), np.sin(t)], 1))


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    # Inner radius 0.45 of the outer (a regular pentagram has 0.38): fatter arms survive at ~10 px.
    k = np.arange(2 * points)
    r = np.where(k % 2 == 0, 1.0, inner)
    a = -math.pi / 2 + k * math.pi / points
    return _normalise(np.stack([r * np.cos(a), r * np.sin(a)], 1))


def _cross(arm: float = 0.36) -> np.ndarray:
    # A plus sign whose arms are `arm` of the box wide.
    a, b = 0.5 - arm / 2, 0.5 + arm / 2
    return np.array([(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b),
                     (0, a), (a, a)], dtype=float)


def _heart() -> np.ndarray:
    # The classic parametric heart curve (y flipped: image y grows downwards).
    t = np.linspace(0, 2 * math.pi, 128, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return _normalise(np.stack([x, y], 1))


SHAPE_OUTLINES: dict[str, np.ndarray] = {
    "circle": _circle(),
    "square": np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float),
    "triangle": np.array([(0.5, 0), (1, 1), (0, 1)], dtype=float),
    "diamond": np.array([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], dtype=float),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPE_OUTLINES)


def polygon_in_box(shape: str, box: Box, scale: float = 1.0) -> list[tuple[float, float]]:
    """Vertices of `shape` stretched to `box`, multiplied by `scale` (pixel coordinates)."""
    if shape not in SHAPE_OUTLINES:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPE_OUTLINES)}")
    x0, y0, x1, y1 = box
    u = SHAPE_OUTLINES[shape]
    xs = (x0 + u[:, 0] * (x1 - x0)) * scale
    ys = (y0 + u[:, 1] * (y1 - y0)) * scale
    return list(zip(xs.tolist(), ys.tolist()))


def coverage(points: Sequence[tuple[float, float]], x_off: int, y_off: int, width: int, height: int,
             ss: int = 4) -> np.ndarray:
    """Fraction in [0, 1] of each pixel of a (height, width) window at (x_off, y_off) inside a polygon.

    Even-odd rule on an ss x ss grid of sample points at sub-pixel centres, then a box average. A
    scanline toggle (cumulative sum of edge crossings) keeps it O(rows x (edges + columns)). Pixel i
    spans [i, i + 1) in continuous coordinates, so a w-wide box covers exactly w pixels (PIL's
    polygon fill includes its boundary and would make every shape one sub-pixel too large).
    """
    p = np.asarray(points, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    rows, cols = height * ss, width * ss
    ys = y_off + (np.arange(rows) + 0.5) / ss                                   # (R,)
    lo, hi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])         # (E,)
    crosses = (ys[:, None] >= lo[None]) & (ys[:, None] < hi[None])              # (R, E)
    dy = np.where(q[:, 1] == p[:, 1], 1.0, q[:, 1] - p[:, 1])
    xs = p[None, :, 0] + (ys[:, None] - p[None, :, 1]) * ((q[:, 0] - p[:, 0]) / dy)[None]
    # A crossing at x toggles every sample whose centre x_off + (j + 0.5)/ss lies right of x.
    first = np.clip(np.floor((xs - x_off) * ss - 0.5).astype(np.int64) + 1, 0, cols)
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    r_idx, e_idx = np.nonzero(crosses)
    np.add.at(toggles, (r_idx, first[r_idx, e_idx]), 1)
    inside = (np.cumsum(toggles[:, :cols], axis=1) & 1).astype(np.float32)     # (R, C)
    return inside.reshape(height, ss, width, ss).mean(axis=(1, 3))


def shape_alpha(shape: str, box: Box, width: int, height: int, ss: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of each pixel of a (height, width) window by `shape` in `box` (pixels)."""
    return coverage(polygon_in_box(shape, box), 0, 0, width, height, ss)


def rasterize(objects: Iterable[tuple[str, Sequence[int], Box]], width: int, height: int,
              background: Sequence[int], ss: int = 4) -> Image.Image:
    """RGB image of the objects (shape, rgb, box in pixels), painted in order, anti-aliased by `ss`.

    Each object is composited over its own pixel window with its coverage as alpha, which for
    non-overlapping objects equals drawing at ss times the size and box-filtering down.
    """
    img = np.empty((height, width, 3), dtype=np.float64)
    img[:] = np.asarray(background, dtype=np.float64)
    for shape, rgb, box in objects:
        x0, y0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
        x1, y1 = min(int(math.ceil(box[2])), width), min(int(math.ceil(box[3])), height)
        if x1 <= x0 or y1 <= y0:
            continue
        a = coverage(polygon_in_box(shape, box), x0, y0, x1 - x0, y1 - y0, ss)[..., None]
        win = img[y0:y1, x0:x1]
        win[:] = win * (1.0 - a) + np.asarray(rgb, dtype=np.float64) * a
    return Image.fromarray(np.rint(img).astype(np.uint8), "RGB")


@functools.lru_cache(maxsize=None)
def shape_moments(shape: str) -> tuple[float, float, float, float, float]:
    """(fill, mean_x, mean_y, var_x, var_y) of `shape` in the unit box, measured on a fine raster.

    For a shape stretched to a w x h box at (x0, y0): area = fill*w*h, centroid = (x0 + mean_x*w,
    y0 + mean_y*h), variances = (var_x*w^2, var_y*h^2). The scorer inverts these to fit a box.
    """
    n = 512
    a = shape_alpha(shape, (0.0, 0.0, float(n), float(n)), n, n, ss=2).astype(np.float64)
    c = (np.arange(n) + 0.5) / n
    m = a.sum()
    mx = (a.sum(0) * c).sum() / m
    my = (a.sum(1) * c).sum() / m
    vx = (a.sum(0) * (c - mx) ** 2).sum() / m
    vy = (a.sum(1) * (c - my) ** 2).sum() / m
    return float(m / n**2), float(mx), float(my), float(vx), float(vy)
