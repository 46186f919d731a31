"""GenEval's relative-position rule, shared by the generator, the hold-out check and the scorer.

From GenEval's ``evaluation/evaluate_images.py`` (``relative_position``): A is "left of" B when the
centre offset of A's box from B's box, after shrinking each axis by ``margin * (dim_a + dim_b)``
(GenEval's POSITION_THRESHOLD = 0.1) and normalising by the unshrunk offset length, has an x
component below -0.5; "right of" above +0.5; "above"/"below" likewise in y (image y grows down).
So the margin is relative to the two objects' sizes, not to the image, and a diagonal offset can
satisfy two relations at once. A smaller margin can only add relations, never remove one.
"""
from __future__ import annotations

import math
from typing import Sequence

Box = Sequence[float]  # (x0, y0, x1, y1)


def relative_position(box_a: Box, box_b: Box, margin: float = 0.1) -> set[str]:
    """Relations of A relative to B ("left of", "right of", "above", "below"), GenEval's rule."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dims = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]),
            abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    revised = [math.copysign(max(abs(o) - margin * d, 0.0), o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels
