"""A stand-in generator for ShapesEval prompts, for tests of the ShapesEval and scaling arithmetic
without a model: its candidates are ground-truth renders, so the analytic scorer's verdicts are known."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from unimodal.evaluation.generator import Candidate
from unimodal.evaluation.testing import candidate_seed
from unimodal.shapes.renders import WRONG_KINDS, render_metadata


class ShapesRenderGenerator:
    """For ShapesEval prompts: candidate k is a ground-truth render of the prompt's metadata line
    with probability `p_correct` (else a deliberately wrong one), and its yes_prob is high exactly
    when it is correct (a perfect judge), while its likelihood is noise (an uninformative judge)."""

    def __init__(self, lines: Sequence[dict], cfg, p_correct: float = 0.4, image_size: int | None = None):
        self.by_prompt = {line["prompt"]: line for line in lines}
        self.cfg = cfg
        self.p_correct = p_correct
        self.image_size = image_size

    def describe(self) -> dict[str, Any]:
        return {"model_path": None, "stand_in": "ShapesRenderGenerator", "p_correct": self.p_correct}

    def generate(self, prompts: Sequence[str], prompt_seeds: Sequence[int], *, n: int, keep: int,
                 decode_rejected: bool = False) -> list[list[Candidate]]:
        out = []
        for prompt, seed in zip(prompts, prompt_seeds):
            line = self.by_prompt[prompt]
            cands = []
            for k in range(n):
                s = candidate_seed(seed, prompt, k)
                rng = np.random.default_rng(s)
                good = bool(rng.random() < self.p_correct)
                img = None
                if not good:
                    for kind in rng.permutation(WRONG_KINDS):
                        img = render_metadata(line, self.cfg, sample=k, wrong=str(kind), image_size=self.image_size)
                        if img is not None:
                            break
                if img is None:
                    good, img = True, render_metadata(line, self.cfg, sample=k, image_size=self.image_size)
                scores = {"yes_prob": (0.6 if good else 0.1) + 0.3 * float(rng.random()),
                          "likelihood": float(rng.normal())}
                cands.append(Candidate(k, s, img, scores, True))
            cands.sort(key=lambda c: -c.scores["yes_prob"])
            for r, c in enumerate(cands):
                c.kept = r < keep
            out.append(cands)
        return out
