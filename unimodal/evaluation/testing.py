"""A stand-in generator implementing `ImageGenerator` without a model, for tests of the harness's
layout / shard / resume logic (ShapesEval's stand-in is `unimodal.shapes.testing`). Real runs (and at
least one test) go through `UnifiedGenerator`."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from unimodal.evaluation.generator import Candidate


def candidate_seed(prompt_seed: int, prompt: str, index: int) -> int:
    """The same derivation as `unimodal.unified.decoding.sample_seed`, without importing the model stack."""
    digest = hashlib.sha256(f"{int(prompt_seed)}\x00{prompt}\x00{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class StandInGenerator:
    """Candidate k of a prompt: a seeded random-blocks image of `size` px and seeded judge scores.
    Counts the prompts it was asked for (`calls`), so resume tests can see what was regenerated."""

    def __init__(self, size: int = 16):
        self.size = size
        self.calls: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"model_path": None, "stand_in": "StandInGenerator", "size": self.size}

    def _candidate(self, prompt: str, seed: int, k: int) -> tuple[int, Image.Image, dict[str, float]]:
        s = candidate_seed(seed, prompt, k)
        rng = np.random.default_rng(s)
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(np.kron(blocks, np.ones((self.size // 4, self.size // 4, 1), dtype=np.uint8)), "RGB")
        return s, img, {"yes_prob": float(rng.random()), "likelihood": float(-rng.random() * 5)}

    def generate(self, prompts: Sequence[str], prompt_seeds: Sequence[int], *, n: int, keep: int,
                 decode_rejected: bool = False) -> list[list[Candidate]]:
        out = []
        for prompt, seed in zip(prompts, prompt_seeds):
            self.calls.append(prompt)
            cands = []
            for k in range(n):
                s, img, scores = self._candidate(prompt, seed, k)
                cands.append(Candidate(k, s, img, scores, True))
            if keep < n:
                cands.sort(key=lambda c: -c.scores["yes_prob"])
            for r, c in enumerate(cands):
                c.kept = r < keep
                if not c.kept and not decode_rejected:
                    c.image = None
            out.append(cands)
        return out
