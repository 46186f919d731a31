"""`ShapesConfig`: everything that defines the Shapes world, its hold-out split and its scorer."""
from __future__ import annotations

import dataclasses
import math

from unimodal.config import Config, ConfigError
from unimodal.shapes.draw import SHAPE_NAMES
from unimodal.shapes.vocab import GENEVAL_COLORS, PALETTE

# Mid gray sits in the middle of the RGB cube, so black and white are equally far from it (~220)
# and every palette colour is >= ~100 away; a light background would swallow white and yellow,
# a dark one black and brown. See `vocab.PALETTE` for the colour choices.
DEFAULT_BACKGROUND = (128, 128, 128)
# Five classes that no low-resolution blob confuses (diamond and heart, also drawable, read as a
# square and a circle at ~14 px); they stay for new-concept finetuning
# (scripts/finetune_shapes_example.py).
DEFAULT_SHAPES = ("circle", "square", "triangle", "star", "cross")


@dataclasses.dataclass
class ShapesConfig(Config):
    # Rendering. Scenes are stored in normalised [0, 1] coordinates, so any image_size shows the
    # same scene; sizes below are fractions of the image side.
    image_size: int = 64
    supersample: int = 4                      # anti-aliasing: ss x ss coverage samples per pixel
    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    colors: tuple[str, ...] = GENEVAL_COLORS

    # Scene sampling.
    # Objects of 3 x 3 tokens on the 8 x 8 token grid (64 px, patch 8): the tiny tower and decoder
    # reconstruct every shape at 24 px (stars 0.10 and crosses 0.55 of the time at 14-20 px; see
    # MODEL_CARD.md), and on the grid a shape is always the same pattern of tokens. Four such
    # objects do not fit.
    min_objects: int = 1
    max_objects: int = 3
    min_size: float = 0.375                   # object box side, fraction of the image side
    max_size: float = 0.375
    min_gap: float = 0.05                     # smallest gap between two object boxes
    # Layout grid: when > 0, object boxes start and end on multiples of 1 / snap of the image side
    # and their sides are whole cells between min_size and max_size (snap = image_size / patch_size
    # puts every object on the encoder's token grid, so a shape of one size is always the same
    # pattern of tokens); 0 places them anywhere.
    snap: int = 8
    edge_margin: float = 0.0                  # smallest gap between a box and the image border
    same_shape_prob: float = 0.35             # chance that a multi-object scene is one shape (counting)
    long_caption_prob: float = 0.5            # chance that a training item's caption is the long one
    relation_margin: float = 0.2              # GenEval margin a relation must clear to be captioned
    max_tries: int = 2000                     # placement attempts before giving up with an error
    seed: int = 0

    # Hold-out: combinations that only evaluation prompts contain.
    holdout_colors_per_shape: int = 1         # (colour, shape) pairs held out per shape
    holdout_relation_pairs: float = 0.33      # fraction of shape pairs with one held-out direction
    holdout_seed: int = 0

    # ShapesEval scorer.
    position_threshold: float = 0.1           # GenEval's POSITION_THRESHOLD
    min_area: float = 0.0015                  # smallest object, fraction of the image area
    min_shape_score: float = 0.6              # template overlap below which a blob has no class

    def __post_init__(self):
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size} must be in [16, 1024]")
        if not 1 <= self.supersample <= 16:
            raise ConfigError(f"supersample={self.supersample} must be in [1, 16]")
        if any(not 0 <= c <= 255 for c in self.background):
            raise ConfigError(f"background={self.background} must be RGB values in [0, 255]")
        unknown = sorted(set(self.shapes) - set(SHAPE_NAMES))
        if unknown or len(set(self.shapes)) != len(self.shapes) or len(self.shapes) < 3:
            raise ConfigError(f"shapes must be >= 3 distinct names from {list(SHAPE_NAMES)}; got {list(self.shapes)}")
        unknown = sorted(set(self.colors) - set(PALETTE))
        if unknown or len(set(self.colors)) != len(self.colors) or len(self.colors) < 2:
            raise ConfigError(f"colors must be >= 2 distinct names from {list(PALETTE)}; got {list(self.colors)}")
        for name in self.colors:
            d = math.dist(PALETTE[name], self.background)
            if d < 80:
                raise ConfigError(f"background={self.background} is only {d:.0f} from {name!r}; "
                                  "pick one >= 80 from every colour (mid gray works)")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ConfigError(f"need 1 <= min_objects <= max_objects <= 8; got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_size <= self.max_size <= 0.5:
            raise ConfigError(f"need 0 < min_size <= max_size <= 0.5; got {self.min_size}, {self.max_size}")
        if self.min_size * self.image_size < 8:
            raise ConfigError(f"min_size * image_size = {self.min_size * self.image_size:.1f} px; shapes below "
                              "8 px cannot be told apart - raise min_size or image_size")
        if self.snap < 0 or (self.snap and not self.snap_cells()):
            raise ConfigError(f"snap={self.snap} must be 0 or a grid with a whole number of cells between "
                              f"min_size={self.min_size} and max_size={self.max_size} that fits inside "
                              f"edge_margin={self.edge_margin}")
        if self.min_gap * self.image_size < 2:
            raise ConfigError(f"min_gap * image_size = {self.min_gap * self.image_size:.1f} px; objects need a "
                              ">= 2 px gap so the scorer can separate them - raise min_gap")
        room = (self.max_objects * (self.max_size + self.min_gap) ** 2) / (1 - 2 * self.edge_margin) ** 2
        if room > 0.6:
            raise ConfigError(f"max_objects={self.max_objects} boxes of max_size={self.max_size} fill "
                              f"{room:.0%} of the image; lower max_size or max_objects")
        for name in ("same_shape_prob", "long_caption_prob", "holdout_relation_pairs"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if not 0 <= self.holdout_colors_per_shape < len(self.colors):
            raise ConfigError(f"holdout_colors_per_shape={self.holdout_colors_per_shape} must leave each "
                              f"shape at least one of its {len(self.colors)} colours")
        if not 0 <= self.position_threshold < 0.5 or not 0 <= self.relation_margin < 0.5:
            raise ConfigError("position_threshold and relation_margin must be in [0, 0.5)")
        if self.relation_margin < self.position_threshold:
            raise ConfigError(f"relation_margin={self.relation_margin} must be >= position_threshold="
                              f"{self.position_threshold}, or captioned relations may fail the scorer")
        if not 0 < self.min_shape_score < 1:
            raise ConfigError(f"min_shape_score={self.min_shape_score} must be in (0, 1)")
        if self.max_tries < 1:
            raise ConfigError(f"max_tries={self.max_tries} must be >= 1")

    def snap_cells(self) -> list[int]:
        """The object sides allowed on the layout grid, in cells: whole cells between min_size and
        max_size that have room inside the edge margin (empty when snap is 0 or none fits)."""
        if not self.snap:
            return []
        sides = range(math.ceil(self.min_size * self.snap - 1e-9), math.floor(self.max_size * self.snap + 1e-9) + 1)
        return [c for c in sides if self.snap_starts(c)]

    def snap_starts(self, cells: int) -> range:
        """The first cells (along either axis) of a box `cells` wide on the layout grid, the edge
        margin kept (rounded up to whole cells)."""
        lo = math.ceil(self.edge_margin * self.snap - 1e-9)
        return range(lo, math.floor((1 - self.edge_margin) * self.snap + 1e-9) - cells + 1)
