"""ShapesEval prompts in GenEval's exact metadata format (`unimodal.evaluation.geneval` reads,
writes and checks that format).

Prompt selection is deterministic (`cfg.holdout_seed`): per tag, up to half of the quota goes to
combinations that contain a held-out pair/triple, the rest to seen ones, each drawn in a seeded
shuffle (default quotas are GenEval's 80/99/80/94/100/100; a tag with fewer combinations takes all
of them: with the default 5 shapes, 5 single_object, 20 two_object, 15 counting and 50 colors lines).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np

from unimodal.evaluation.geneval import GENEVAL_TAGS, RELATIONS
from unimodal.shapes import captions as cap
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.holdout import HoldOut, metadata_violations

GENEVAL_QUOTAS: dict[str, int] = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                  "position": 100, "color_attr": 100}
COUNTS: tuple[int, ...] = (2, 3, 4)   # GenEval's counting prompts ask for two, three or four


def _clause(shape: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict:
    c: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        c["color"] = color
    if position is not None:
        c["position"] = position
    return c


def tag_lines(tag: str, cfg: ShapesConfig) -> list[dict[str, Any]]:
    """Every metadata line of one GenEval tag that the world's shapes and colours allow."""
    S, C = cfg.shapes, cfg.colors
    lines = []
    if tag == "single_object":
        for s in S:
            lines.append({"tag": tag, "include": [_clause(s)], "prompt": cap.prompt_single_object(s)})
    elif tag == "two_object":
        for a, b in itertools.permutations(S, 2):
            lines.append({"tag": tag, "include": [_clause(a), _clause(b)], "prompt": cap.prompt_two_object(a, b)})
    elif tag == "counting":
        for s, n in itertools.product(S, [n for n in COUNTS if n <= cfg.max_objects]):
            lines.append({"tag": tag, "include": [_clause(s, n)], "exclude": [_clause(s, n + 1)],
                          "prompt": cap.prompt_counting(n, s)})
    elif tag == "colors":
        for s, c in itertools.product(S, C):
            lines.append({"tag": tag, "include": [_clause(s, 1, c)], "prompt": cap.prompt_colors(c, s)})
    elif tag == "position":
        # GenEval order: the reference object first, the positioned one second pointing at clause 0.
        for a, b in itertools.permutations(S, 2):
            for rel in RELATIONS:
                lines.append({"tag": tag, "include": [_clause(b), _clause(a, 1, position=[rel, 0])],
                              "prompt": cap.prompt_position(a, rel, b)})
    elif tag == "color_attr":
        for s1, s2 in itertools.permutations(S, 2):
            for c1, c2 in itertools.product(C, C):
                lines.append({"tag": tag, "include": [_clause(s1, 1, c1), _clause(s2, 1, c2)],
                              "prompt": cap.prompt_color_attr(c1, s1, c2, s2)})
    else:
        raise ValueError(f"unknown tag {tag!r}; GenEval's are {list(GENEVAL_TAGS)}")
    return lines


def build_metadata(cfg: ShapesConfig, holdout: HoldOut, quotas: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """ShapesEval prompt lines for all six tags, in GenEval's tag order."""
    quotas = dict(GENEVAL_QUOTAS if quotas is None else quotas)
    unknown = sorted(set(quotas) - set(GENEVAL_TAGS))
    if unknown:
        raise ValueError(f"unknown tag(s) {unknown} in quotas; GenEval's are {list(GENEVAL_TAGS)}")
    out = []
    for t, tag in enumerate(GENEVAL_TAGS):
        cands = tag_lines(tag, cfg)
        order = np.random.default_rng([cfg.holdout_seed, t]).permutation(len(cands)).tolist()
        quota = quotas.get(tag, 0)
        held = [i for i in order if metadata_violations(cands[i], holdout)]
        seen = [i for i in order if not metadata_violations(cands[i], holdout)]
        n_held = max(min(len(held), (quota + 1) // 2), quota - len(seen))
        chosen = set(held[:n_held] + seen[: quota - n_held])
        out.extend(cands[i] for i in order if i in chosen)
    return out


def split_by_holdout(lines: Iterable[dict[str, Any]], holdout: HoldOut) -> tuple[list[dict], list[dict]]:
    """(lines whose combinations training has seen, lines asking for a held-out combination)."""
    seen, held = [], []
    for line in lines:
        (held if metadata_violations(line, holdout) else seen).append(line)
    return seen, held
