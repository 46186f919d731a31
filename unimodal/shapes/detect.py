"""ShapesEval's detector: colour segmentation, connected components, shape by template fit.

1. Colour. Every pixel p is explained as a mix of the background b and one palette colour c,
   p ~ b + t (c - b): t is the projection on the segment b->c (clipped to [0, 1]) and the pixel's
   colour is the c whose segment is nearest. Anti-aliased edge pixels are exactly such mixes, so
   they get their object's colour instead of a neighbouring palette colour; pixels with t >= 0.5
   are foreground (more object than background).
2. Objects. 8-connected components of the foreground (scipy.ndimage.label). A component holding
   two colours with >= 25% of its mass each is split by colour (objects of different colours that
   touch). Blobs under `cfg.min_area` of the image are dropped (noise, stray fringes).
3. Shape. Each blob's soft mask (t along its colour's segment, over the blob and a 2 px ring that
   catches its anti-aliased edge) gives area, centroid and variances. Every class fills its box, so
   under class s those moments determine the box (`draw.shape_moments`); the class whose template,
   rendered in that box, overlaps the soft mask best (sum(min) / sum(max)) wins. That overlap is
   the detection's score; below `cfg.min_shape_score` the blob gets no class (a detector miss).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.draw import shape_alpha, shape_moments
from unimodal.shapes.vocab import PALETTE

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True)
class Detection:
    shape: str | None                           # best class, None if no template fits well enough
    color: str
    box: tuple[float, float, float, float]      # fitted (x0, y0, x1, y1) in pixels
    score: float                                # template overlap of `shape` in [0, 1]
    area: float                                 # soft area in pixels

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "box": [round(v, 2) for v in self.box],
                "score": round(self.score, 4), "area": round(self.area, 2)}


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 RGB in 0..255 from a PIL image or a uint8 / [0, 1] float array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError("float images must lie in [0, 1]")
    return arr.astype(np.float64) * 255.0


def pixel_colors(arr: np.ndarray, cfg: ShapesConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest background->colour segment (H, W), and t for every colour
    (H, W, K), the position along each segment clipped to [0, 1]."""
    bg = np.asarray(cfg.background, dtype=np.float64)
    d = np.asarray([PALETTE[c] for c in cfg.colors], dtype=np.float64) - bg       # (K, 3)
    v = arr - bg                                                                   # (H, W, 3)
    dd = (d * d).sum(1)                                                            # (K,)
    vd = v @ d.T                                                                   # (H, W, K)
    t = np.clip(vd / dd, 0.0, 1.0)
    resid = (v * v).sum(-1, keepdims=True) - 2 * t * vd + t * t * dd               # |v - t d|^2
    return resid.argmin(-1), t


def _regions(fg: np.ndarray, label: np.ndarray, t_lab: np.ndarray, k: int, min_px: float):
    """Yield (mask over the image, colour index) per object region."""
    comps, n = ndimage.label(fg, structure=_EIGHT)
    for idx, sl in enumerate(ndimage.find_objects(comps), 1):
        m = comps[sl] == idx
        mass = np.bincount(label[sl][m], weights=t_lab[sl][m], minlength=k)
        if mass.sum() < min_px:
            continue
        strong = [c for c in range(k) if mass[c] >= max(min_px, 0.25 * mass.sum())]
        if len(strong) <= 1:
            full = np.zeros(fg.shape, dtype=bool)
            full[sl] = m
            yield full, int(mass.argmax())
            continue
        for c in strong:  # touching objects of different colours
            sub, n_sub = ndimage.label(m & (label[sl] == c), structure=_EIGHT)
            for j in range(1, n_sub + 1):
                part = sub == j
                if t_lab[sl][part].sum() >= min_px:
                    full = np.zeros(fg.shape, dtype=bool)
                    full[sl] = part
                    yield full, c


def _fit_box(shape: str, mx: float, my: float, vx: float, vy: float):
    _, ux, uy, wx, wy = shape_moments(shape)
    w, h = math.sqrt(vx / wx), math.sqrt(vy / wy)
    return (mx - ux * w, my - uy * h, mx - ux * w + w, my - uy * h + h)


def classify(alpha: np.ndarray, x_off: int, y_off: int, cfg: ShapesConfig, image_hw: tuple[int, int]):
    """(best class, its overlap, its box, scores of all classes) for a soft mask `alpha` whose
    window starts at pixel (x_off, y_off)."""
    H, W = image_hw
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    m = alpha.sum()
    mx = (alpha * (xs + 0.5 + x_off)).sum() / m
    my = (alpha * (ys + 0.5 + y_off)).sum() / m
    vx = (alpha * (xs + 0.5 + x_off - mx) ** 2).sum() / m
    vy = (alpha * (ys + 0.5 + y_off - my) ** 2).sum() / m
    boxes = {s: _fit_box(s, mx, my, vx, vy) for s in cfg.shapes}
    # One window holding the blob and every hypothesis' box, so no template is cut off.
    x0 = max(0, min([x_off] + [int(math.floor(b[0])) - 1 for b in boxes.values()]))
    y0 = max(0, min([y_off] + [int(math.floor(b[1])) - 1 for b in boxes.values()]))
    x1 = min(W, max([x_off + alpha.shape[1]] + [int(math.ceil(b[2])) + 1 for b in boxes.values()]))
    y1 = min(H, max([y_off + alpha.shape[0]] + [int(math.ceil(b[3])) + 1 for b in boxes.values()]))
    a = np.zeros((y1 - y0, x1 - x0))
    a[y_off - y0:y_off - y0 + alpha.shape[0], x_off - x0:x_off - x0 + alpha.shape[1]] = alpha
    scores = {}
    for s, b in boxes.items():
        tpl = shape_alpha(s, (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0), x1 - x0, y1 - y0, ss=8)
        scores[s] = float(np.minimum(a, tpl).sum() / max(np.maximum(a, tpl).sum(), 1e-9))
    best = max(scores, key=scores.get)
    return best, scores[best], boxes[best], scores


def detect_objects(image: Image.Image | np.ndarray, cfg: ShapesConfig) -> list[Detection]:
    """All objects in `image`, most confident first."""
    arr = to_array(image)
    H, W = arr.shape[:2]
    label, t = pixel_colors(arr, cfg)
    t_lab = np.take_along_axis(t, label[..., None], -1)[..., 0]
    fg = t_lab >= 0.5
    min_px = cfg.min_area * H * W
    out = []
    for region, c in _regions(fg, label, t_lab, len(cfg.colors), min_px):
        ring = ndimage.binary_dilation(region, structure=_EIGHT, iterations=2)
        keep = ring & (region | ~fg)          # the blob and its fringe, never another object
        rows, cols = np.nonzero(keep)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        alpha = np.where(keep[y0:y1, x0:x1], t[y0:y1, x0:x1, c], 0.0)
        area = float(alpha.sum())
        if area < min_px:
            continue
        best, score, box, _ = classify(alpha, x0, y0, cfg, (H, W))
        shape = best if score >= cfg.min_shape_score else None
        out.append(Detection(shape, cfg.colors[c], tuple(float(v) for v in box), score, area))
    out.sort(key=lambda d: -d.score)
    return out
