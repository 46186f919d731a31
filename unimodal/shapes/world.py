"""Seeded scene sampling: object placement by rejection, and the training-scene generator.

Scene `index` of split `split` with seed `cfg.seed` is always the same: its random generator is
seeded by (seed, crc32(split), index) and nothing else, so any item can be regenerated on its own.
"""
from __future__ import annotations

import functools
import json
import zlib
from typing import Callable, Sequence

import numpy as np

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.holdout import HoldOut, build_holdout, scene_violations
from unimodal.shapes.scene import Scene, ShapeObject, boxes_apart

# (shape, colour, size) of one object to place.
Spec = tuple[str, str, float]


def item_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """Generator for item `index` of `split`; `stream` separates independent draws of one item."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index, stream])


def random_size(cfg: ShapesConfig, rng: np.random.Generator) -> float:
    if cfg.snap:
        cells = cfg.snap_cells()
        return cells[int(rng.integers(len(cells)))] / cfg.snap
    return float(rng.uniform(cfg.min_size, cfg.max_size))


def random_center(size: float, cfg: ShapesConfig, rng: np.random.Generator) -> tuple[float, float]:
    if cfg.snap:
        starts = cfg.snap_starts(round(size * cfg.snap))
        x0, y0 = rng.integers(starts.start, starts.stop, size=2) / cfg.snap
        return float(x0 + size / 2), float(y0 + size / 2)
    lo, hi = cfg.edge_margin + size / 2, 1 - cfg.edge_margin - size / 2
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def fits(obj: ShapeObject, others: Sequence[ShapeObject], cfg: ShapesConfig) -> bool:
    return all(boxes_apart(obj, o, cfg.min_gap) for o in others)


def place_objects(specs: Sequence[Spec], cfg: ShapesConfig, rng: np.random.Generator,
                  accept: Callable[[tuple[ShapeObject, ...]], bool] | None = None,
                  fixed: Sequence[ShapeObject] = ()) -> tuple[ShapeObject, ...]:
    """Place `specs` (in order) at random non-overlapping spots around the `fixed` objects.

    Whole layouts are redrawn until `accept(fixed + placed)` holds; raises RuntimeError after
    `cfg.max_tries` attempts (the constraints are then too tight for the sizes).
    """
    for _ in range(cfg.max_tries):
        placed: list[ShapeObject] = []
        for shape, color, size in specs:
            for _ in range(50):
                cx, cy = random_center(size, cfg, rng)
                obj = ShapeObject(shape, color, cx, cy, size)
                if fits(obj, [*fixed, *placed], cfg):
                    placed.append(obj)
                    break
            else:
                break
        else:
            objs = (*fixed, *placed)
            if accept is None or accept(objs):
                return objs
    raise RuntimeError(f"could not place {len(specs)} objects in {cfg.max_tries} tries; lower max_size or "
                       "max_objects, or relax the layout constraint")


@functools.lru_cache(maxsize=16)
def _holdout_for(cfg_json: str) -> HoldOut:
    return build_holdout(ShapesConfig.from_dict(json.loads(cfg_json)))


def holdout_of(cfg: ShapesConfig) -> HoldOut:
    """The config's hold-out set (cached: it is rebuilt only when the config changes)."""
    return _holdout_for(cfg.to_json_string())


def sample_scene(cfg: ShapesConfig, rng: np.random.Generator, holdout: HoldOut) -> Scene:
    """A training scene: 1..max_objects objects, never showing a held-out combination.

    With probability `same_shape_prob` a multi-object scene repeats one shape (counting scenes);
    colours are drawn per object from those not held out for its shape.
    """
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if n > 1 and rng.random() < cfg.same_shape_prob:
        shapes = [cfg.shapes[int(rng.integers(len(cfg.shapes)))]] * n
    else:
        shapes = [cfg.shapes[int(i)] for i in rng.integers(len(cfg.shapes), size=n)]
    specs = []
    for shape in shapes:
        allowed = holdout.allowed_colors(shape, cfg.colors)
        specs.append((shape, allowed[int(rng.integers(len(allowed)))], random_size(cfg, rng)))
    objs = place_objects(specs, cfg, rng, accept=lambda o: not scene_violations(o, holdout))
    return Scene(objs)


def training_scene(cfg: ShapesConfig, split: str, index: int) -> Scene:
    """Scene `index` of `split` (deterministic; see module docstring)."""
    return sample_scene(cfg, item_rng(cfg.seed, split, index), holdout_of(cfg))


def shape_twin(scene: Scene, cfg: ShapesConfig, rng: np.random.Generator, tries: int = 20) -> Scene | None:
    """The scene with one object's shape changed (same place, size and colour), or None when every
    try shows a held-out combination. A hard negative: only a shape word tells the two apart."""
    holdout = holdout_of(cfg)
    for _ in range(tries):
        k = int(rng.integers(len(scene.objects)))
        o = scene.objects[k]
        choices = [s for s in cfg.shapes if s != o.shape and not holdout.holds_pair(o.color, s)]
        twin = scene.replace_object(k, shape=choices[int(rng.integers(len(choices)))])
        if not scene_violations(twin.objects, holdout):
            return twin
    return None
