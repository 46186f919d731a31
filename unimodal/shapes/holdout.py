"""Held-out combinations: (colour, shape) pairs and (shape, relation, shape) triples that only
evaluation prompts contain. The training generator rejects every scene that shows one.

A relation triple is stored canonically ("left of" / "above"): (a, "right of", b) is the same fact
as (b, "left of", a). A scene *shows* a triple when GenEval's relation rule with margin 0 holds
between two of its objects; margin 0 gives the largest relation sets, so any layout the scorer
(margin 0.1) would call "a left of b" is excluded from training too.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Iterable

import numpy as np

from unimodal.evaluation.geneval import RELATIONS
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.relations import relative_position
from unimodal.shapes.scene import ShapeObject
from unimodal.shapes.vocab import OPPOSITE, plural

Triple = tuple[str, str, str]


def canonical(a: str, rel: str, b: str) -> Triple:
    """(a, rel, b) with rel turned into "left of" or "above" by swapping the objects if needed."""
    if rel not in RELATIONS:
        raise ValueError(f"unknown relation {rel!r}; GenEval's are {list(RELATIONS)}")
    return (b, OPPOSITE[rel], a) if rel in ("right of", "below") else (a, rel, b)


@dataclasses.dataclass(frozen=True)
class HoldOut:
    color_shape: frozenset[tuple[str, str]]   # (colour, shape)
    relations: frozenset[Triple]              # canonical (shape_a, rel, shape_b)

    def holds_pair(self, color: str, shape: str) -> bool:
        return (color, shape) in self.color_shape

    def holds_triple(self, a: str, rel: str, b: str) -> bool:
        return canonical(a, rel, b) in self.relations

    def allowed_colors(self, shape: str, colors: Iterable[str]) -> list[str]:
        return [c for c in colors if (c, shape) not in self.color_shape]

    def to_dict(self) -> dict[str, Any]:
        return {"color_shape": sorted(map(list, self.color_shape)), "relations": sorted(map(list, self.relations))}


def build_holdout(cfg: ShapesConfig) -> HoldOut:
    """Deterministic from `cfg.holdout_seed`; spreads held-out colours evenly over the shapes and
    holds out at most one of the four directions of a shape pair, so every pair can still co-occur."""
    rng = np.random.default_rng([cfg.holdout_seed, 0x5EED])
    colors = [cfg.colors[i] for i in rng.permutation(len(cfg.colors))]
    k = cfg.holdout_colors_per_shape
    pairs = {(colors[(i * k + j) % len(colors)], s) for i, s in enumerate(cfg.shapes) for j in range(k)}
    shape_pairs = list(itertools.combinations(cfg.shapes, 2))
    n = int(round(cfg.holdout_relation_pairs * len(shape_pairs)))
    triples = set()
    for idx in sorted(rng.choice(len(shape_pairs), size=n, replace=False).tolist()):
        a, b = shape_pairs[idx]
        triples.add(canonical(a, RELATIONS[int(rng.integers(len(RELATIONS)))], b))
    return HoldOut(frozenset(pairs), frozenset(triples))


def scene_violations(objects: Iterable[ShapeObject], holdout: HoldOut) -> list[str]:
    """Held-out combinations the objects show (empty list: allowed in training)."""
    objs = list(objects)
    out = [f"{o.color} {o.shape}" for o in objs if holdout.holds_pair(o.color, o.shape)]
    for a, b in itertools.permutations(objs, 2):
        for rel in relative_position(a.bbox, b.bbox, margin=0.0):
            if holdout.holds_triple(a.shape, rel, b.shape):
                out.append(f"{a.shape} {rel} {b.shape}")
    return out


def metadata_violations(line: dict[str, Any], holdout: HoldOut) -> list[str]:
    """Held-out combinations a GenEval metadata line asks for."""
    out = []
    include = line["include"]
    for clause in include:
        if "color" in clause and holdout.holds_pair(clause["color"], clause["class"]):
            out.append(f"{clause['color']} {clause['class']}")
        if "position" in clause:
            rel, target = clause["position"]
            if holdout.holds_triple(clause["class"], rel, include[target]["class"]):
                out.append(f"{clause['class']} {rel} {include[target]['class']}")
    return out


def caption_violations(caption: str, holdout: HoldOut, colors: Iterable[str]) -> list[str]:
    """Held-out combinations a caption states, for the phrasings `captions.py` produces:
    "red circle(s)", "a circle left of a star", "the red circle is left of the blue star"."""
    colors = list(colors)
    out = []
    for color, shape in sorted(holdout.color_shape):
        if re.search(rf"\b{color} (?:{shape}|{plural(shape)})\b", caption):
            out.append(f"{color} {shape}")
    color_word = "(?:" + "|".join(colors) + ") " if colors else ""
    for a, rel, b in sorted(holdout.relations):
        for x, r, y in ((a, rel, b), (b, OPPOSITE[rel], a)):
            pat = rf"\b{x} (?:is )?{r} (?:a |an |the )(?:{color_word})?{y}\b"
            if re.search(pat, caption):
                out.append(f"{x} {r} {y}")
    return out
