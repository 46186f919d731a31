"""Ground-truth and deliberately wrong renders of a GenEval metadata line (for scorer validation).

A ground-truth scene has exactly `count` objects per include clause (random colour unless the
clause names one), every position clause satisfied with `cfg.relation_margin` (stricter than the
scorer's 0.1), plus optional distractors of classes the line does not mention. A wrong render is
the same scene with one minimal change of one kind:

  color     one object of a coloured clause gets another colour      (tags with colours)
  count     counting: N - 1 or N + 1 objects (N + 1 in a fresh layout); other tags: one removed
  shape     one object of an include clause becomes a class the line does not mention
  relation  a new layout of the same objects where the relation fails even with margin 0
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from PIL import Image

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.relations import relative_position
from unimodal.shapes.scene import Scene, ShapeObject, render_scene
from unimodal.shapes.world import place_objects, random_size

WRONG_KINDS: tuple[str, ...] = ("color", "count", "shape", "relation")


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


def _mentioned(line: dict[str, Any]) -> set[str]:
    return {c["class"] for c in line["include"]} | {c["class"] for c in line.get("exclude", [])}


def _relations_hold(objs, owner, line, margin: float, want: bool) -> bool:
    """Every (positioned object, target object) pair has the relation (want) / lacks it (not want)."""
    for k, clause in enumerate(line["include"]):
        if "position" not in clause:
            continue
        rel, t = clause["position"]
        for o, ko in zip(objs, owner):
            for p, kp in zip(objs, owner):
                if ko == k and kp == t and (rel in relative_position(o.bbox, p.bbox, margin)) != want:
                    return False
    return True


def metadata_objects(line: dict[str, Any], cfg: ShapesConfig, rng: np.random.Generator,
                     n_distractors: int = 0) -> tuple[list[ShapeObject], list[int]]:
    """Ground-truth objects and, for each, its include-clause index (-1 for a distractor)."""
    specs, owner = [], []
    for k, clause in enumerate(line["include"]):
        for _ in range(clause["count"]):
            color = clause.get("color") or _pick(rng, list(cfg.colors))
            specs.append((clause["class"], color, random_size(cfg, rng)))
            owner.append(k)
    # Distractors only while the scene stays within max_objects; placed jointly with the rest.
    others = [s for s in cfg.shapes if s not in _mentioned(line)]
    n_extra = min(n_distractors, cfg.max_objects - len(specs)) if others else 0
    for _ in range(max(n_extra, 0)):
        specs.append((_pick(rng, others), _pick(rng, list(cfg.colors)), random_size(cfg, rng)))
        owner.append(-1)
    objs = list(place_objects(specs, cfg, rng, accept=lambda o: _relations_hold(
        o, owner, line, cfg.relation_margin, want=True)))
    return objs, owner


def wrong_objects(line: dict[str, Any], kind: str, objs: list[ShapeObject], owner: list[int],
                  cfg: ShapesConfig, rng: np.random.Generator) -> list[ShapeObject] | None:
    """The ground-truth objects with one change of `kind`; None when the kind does not apply."""
    include = line["include"]
    mine = [i for i, k in enumerate(owner) if k >= 0]
    if kind == "color":
        coloured = [i for i in mine if "color" in include[owner[i]]]
        if not coloured:
            return None
        i = _pick(rng, coloured)
        new = _pick(rng, [c for c in cfg.colors if c != include[owner[i]]["color"]])
        return [o if j != i else ShapeObject(o.shape, new, o.cx, o.cy, o.size) for j, o in enumerate(objs)]
    if kind == "count":
        # N + 1 exercises the exclude clause; only up to max_objects, where placement has room.
        # A fresh joint layout: adding to a fixed layout may find no room. Distractors go first
        # when the scene would exceed max_objects.
        if line["tag"] == "counting" and rng.random() < 0.5 and include[0]["count"] < cfg.max_objects:
            o = objs[mine[0]]
            specs = [(p.shape, p.color, p.size) for p in (objs[i] for i in mine)]
            specs.append((o.shape, _pick(rng, list(cfg.colors)), random_size(cfg, rng)))
            extra = [(p.shape, p.color, p.size) for i, p in enumerate(objs) if owner[i] < 0]
            specs += extra[: max(cfg.max_objects - len(specs), 0)]
            return list(place_objects(specs, cfg, rng))
        i = _pick(rng, mine)
        return [o for j, o in enumerate(objs) if j != i]
    if kind == "shape":
        others = [s for s in cfg.shapes if s not in _mentioned(line)]
        i = _pick(rng, mine)
        o = objs[i]
        return [p if j != i else ShapeObject(_pick(rng, others), o.color, o.cx, o.cy, o.size) for j, p in enumerate(objs)]
    if kind == "relation":
        if not any("position" in c for c in include):
            return None
        # Same objects in a fresh joint layout (moving one object around a fixed layout may find
        # no room) where every relation fails even with margin 0.
        specs = [(o.shape, o.color, o.size) for o in objs]
        return list(place_objects(specs, cfg, rng, accept=lambda o: _relations_hold(
            o, owner, line, 0.0, want=False)))
    raise ValueError(f"unknown wrong-render kind {kind!r}; choose from {list(WRONG_KINDS)}")


def metadata_rng(line: dict[str, Any], cfg: ShapesConfig, sample: int) -> np.random.Generator:
    """Seeded by (cfg.seed, prompt, sample): sample k of a prompt is always the same picture."""
    return np.random.default_rng([cfg.seed, zlib.crc32(line["prompt"].encode()), sample, 0x6E0])


def metadata_scene(line: dict[str, Any], cfg: ShapesConfig, sample: int = 0, wrong: str | None = None,
                   n_distractors: int = 0) -> Scene | None:
    """Ground-truth scene of `line` (wrong=None) or its wrong variant (None when not applicable)."""
    rng = metadata_rng(line, cfg, sample)
    objs, owner = metadata_objects(line, cfg, rng, n_distractors)
    if wrong is not None:
        objs = wrong_objects(line, wrong, objs, owner, cfg, rng)
        if objs is None:
            return None
    return Scene(tuple(objs))


def render_metadata(line: dict[str, Any], cfg: ShapesConfig, sample: int = 0, wrong: str | None = None,
                    n_distractors: int = 0, image_size: int | None = None) -> Image.Image | None:
    """Rendered `metadata_scene` (None when the wrong kind does not apply to the line)."""
    scene = metadata_scene(line, cfg, sample, wrong, n_distractors)
    return None if scene is None else render_scene(scene, cfg, image_size)
