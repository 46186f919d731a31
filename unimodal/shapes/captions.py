"""Captions: GenEval's six prompt templates, exactly as GenEval phrases them, and long descriptions.

GenEval's templates (from its ``evaluation_metadata.jsonl``), with "a"/"an" chosen by the next word:
  single_object  "a photo of a bench"
  two_object     "a photo of a toaster and an oven"
  counting       "a photo of three clocks"           (GenEval appends "s"; we use real plurals)
  colors         "a photo of an orange cow"
  position       "a photo of a dog right of a teddy bear"   (the first object is the positioned one)
  color_attr     "a photo of a purple wine glass and a black apple"

`scene_captions` only emits a GenEval-style caption when it describes the whole scene exactly
(every object mentioned, counts exact, relations clearing `cfg.relation_margin` under GenEval's
rule), so a training caption is never a loose description.
"""
from __future__ import annotations

from collections import Counter

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.relations import relative_position
from unimodal.shapes.scene import Scene, ShapeObject
from unimodal.shapes.vocab import article, number_word, plural


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def prompt_single_object(shape: str) -> str:
    return f"a photo of {_a(shape)}"


def prompt_two_object(a: str, b: str) -> str:
    return f"a photo of {_a(a)} and {_a(b)}"


def prompt_counting(n: int, shape: str) -> str:
    return f"a photo of {number_word(n)} {plural(shape)}"


def prompt_colors(color: str, shape: str) -> str:
    return f"a photo of {_a(f'{color} {shape}')}"


def prompt_position(a: str, rel: str, b: str) -> str:
    """`a` stands `rel` of `b`: GenEval's include = [{b}, {a, position: [rel, 0]}]."""
    return f"a photo of {_a(a)} {rel} {_a(b)}"


def prompt_color_attr(c1: str, s1: str, c2: str, s2: str) -> str:
    return f"a photo of {_a(f'{c1} {s1}')} and {_a(f'{c2} {s2}')}"


def clear_relations(a: ShapeObject, b: ShapeObject, cfg: ShapesConfig) -> set[str]:
    """Relations of a to b that hold with the stricter captioning margin."""
    return relative_position(a.bbox, b.bbox, margin=cfg.relation_margin)


def scene_captions(scene: Scene, cfg: ShapesConfig) -> dict[str, list[str]]:
    """Exact captions of the scene, keyed by GenEval tag plus "long" (always one entry)."""
    objs = scene.objects
    out: dict[str, list[str]] = {}
    shapes = Counter(o.shape for o in objs)
    if len(objs) == 1:
        o = objs[0]
        out["single_object"] = [prompt_single_object(o.shape)]
        out["colors"] = [prompt_colors(o.color, o.shape)]
    elif len(shapes) == 1:
        out["counting"] = [prompt_counting(len(objs), objs[0].shape)]
    elif len(objs) == 2:
        a, b = objs
        out["two_object"] = [prompt_two_object(a.shape, b.shape), prompt_two_object(b.shape, a.shape)]
        out["color_attr"] = [prompt_color_attr(a.color, a.shape, b.color, b.shape),
                             prompt_color_attr(b.color, b.shape, a.color, a.shape)]
        pos = [prompt_position(x.shape, rel, y.shape)
               for x, y in ((a, b), (b, a)) for rel in sorted(clear_relations(x, y, cfg))]
        if pos:
            out["position"] = pos
    out["long"] = [long_caption(scene, cfg)]
    return out


def _size_word(o: ShapeObject, cfg: ShapesConfig) -> str:
    third = (cfg.max_size - cfg.min_size) / 3
    if o.size < cfg.min_size + third:
        return "small "
    return "large " if o.size > cfg.max_size - third else ""


_PLACES = {("top", "left"): "at the top left", ("top", "center"): "at the top",
           ("top", "right"): "at the top right", ("middle", "left"): "on the left",
           ("middle", "center"): "in the center", ("middle", "right"): "on the right",
           ("bottom", "left"): "at the bottom left", ("bottom", "center"): "at the bottom",
           ("bottom", "right"): "at the bottom right"}


def _place(o: ShapeObject) -> str:
    row = ("top", "middle", "bottom")[min(int(o.cy * 3), 2)]
    col = ("left", "center", "right")[min(int(o.cx * 3), 2)]
    return _PLACES[(row, col)]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def long_caption(scene: Scene, cfg: ShapesConfig, max_relations: int = 3) -> str:
    """E.g. "two objects: a small red circle on the left and a blue star at the top right;
    the red circle is below the blue star". Objects are listed left to right; relations are given
    between objects whose colour+shape is unique in the scene, strongest relation per pair."""
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    n = len(objs)
    head = f"{number_word(n)} object{'s' if n > 1 else ''}: "
    parts = [f"{_a(_size_word(o, cfg) + f'{o.color} {o.shape}')} {_place(o)}" for o in objs]
    names = Counter((o.color, o.shape) for o in objs)
    rels = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = objs[i], objs[j]
            if names[(a.color, a.shape)] > 1 or names[(b.color, b.shape)] > 1:
                continue
            found = clear_relations(a, b, cfg)
            if not found:
                continue
            dx, dy = abs(a.cx - b.cx), abs(a.cy - b.cy)
            rel = sorted(found, key=lambda r: dx if r in ("left of", "right of") else dy)[-1]
            rels.append(f"the {a.color} {a.shape} is {rel} the {b.color} {b.shape}")
    text = head + _join(parts)
    if rels:
        text += "; " + ", ".join(rels[:max_relations])
    return text
