"""Scene representation (objects with shape, colour, centre, size, box) and rendering.

Coordinates are normalised to [0, 1] (x right, y down), so a scene is independent of the image
size it is rendered at.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.draw import rasterize
from unimodal.shapes.vocab import PALETTE


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    cx: float      # box centre, fraction of the image width
    cy: float      # box centre, fraction of the image height
    size: float    # box side, fraction of the image side (every shape fills its square box)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bbox"] = [round(v, 6) for v in self.bbox]
        return d


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        fields = ("shape", "color", "cx", "cy", "size")
        return cls(tuple(ShapeObject(**{k: o[k] for k in fields}) for o in data["objects"]))

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        return cls.from_dict(json.loads(text))

    def replace_object(self, index: int, **changes: Any) -> "Scene":
        objs = list(self.objects)
        objs[index] = dataclasses.replace(objs[index], **changes)
        return Scene(tuple(objs))


def boxes_apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """True when the two boxes are separated by at least `gap` along x or along y."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def render_scene(scene: Scene, cfg: ShapesConfig, image_size: int | None = None) -> Image.Image:
    """The scene as an RGB PIL image of side `image_size` (default `cfg.image_size`)."""
    s = image_size or cfg.image_size
    objs = [(o.shape, PALETTE[o.color], tuple(v * s for v in o.bbox)) for o in scene.objects]
    return rasterize(objs, s, s, cfg.background, cfg.supersample)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
