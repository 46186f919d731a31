"""Does the prompt reach the DiT? Measurements of the LLM -> queries -> connector conditioning.

For every (colour, shape) pair the model gets GenEval's colour prompt ("a photo of a red circle"),
and two questions are asked of what comes out:
- the conditioning [P, N, Dc]: how much it varies between prompts relative to its size, which part
  of that variation follows the colour word and which the shape word (`variance_share`), and whether
  colour / shape can be read back from it for words combined in a way not used to fit the reader
  (`centroid_accuracy` on per-feature standardised conditions, fitted on half the shapes and read on
  the other half, and the same for shape across colours);
- the sample: does one image drawn for the prompt contain an object of the asked colour, of the
  asked shape, and both in one object (GenEval's "colors" rule, scored by ShapesEval).
`amplify` k redraws the samples from ybar + k (y - ybar), ybar the mean over prompts: when the DiT
has learned to read a direction that is merely too weak, k > 1 raises the hits; when it has not,
nothing changes.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from unimodal.evaluation.generator import tensor_to_pil
from unimodal.shapes.config import ShapesConfig
from unimodal.shapes.detect import detect_objects
from unimodal.shapes.metadata import tag_lines
from unimodal.shapes.scorer import evaluate
from unimodal.unified.decoding import sample_latents, sample_seed
from unimodal.unified.generate import query_condition


def variance_share(cond: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the between-row variance of `cond` [P, ...] explained by the group means of
    `labels` [P] (1 = the rows differ only by label, 0 = the label changes nothing)."""
    flat = cond.flatten(1).float()
    means = torch.stack([flat[labels == k].mean(0) for k in labels.unique()])
    weights = torch.stack([(labels == k).float().mean() for k in labels.unique()])
    grand = flat.mean(0)
    between = (weights[:, None] * (means - grand) ** 2).sum(0).mean()
    total = flat.var(0, unbiased=False).mean()
    return float(between / total) if total > 0 else 0.0


def centroid_accuracy(cond: torch.Tensor, labels: torch.Tensor, fit: torch.Tensor) -> float:
    """Nearest-centroid accuracy of reading `labels` from standardised `cond`, centroids fitted on
    the rows where `fit` is true and tested on the others."""
    flat = cond.flatten(1).float()
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    classes = labels[fit].unique()
    centroids = torch.stack([flat[fit & (labels == k)].mean(0) for k in classes])
    pred = classes[torch.cdist(flat[~fit], centroids).argmin(1)]
    return float((pred == labels[~fit]).float().mean())


@torch.no_grad()
def probe_conditioning(model, cfg: ShapesConfig, amplify: Sequence[float] = (1.0,), seed: int = 0) -> dict[str, Any]:
    lines = tag_lines("colors", cfg)
    prompts = [line["prompt"] for line in lines]
    colour = torch.tensor([cfg.colors.index(line["include"][0]["color"]) for line in lines])
    shape = torch.tensor([cfg.shapes.index(line["include"][0]["class"]) for line in lines])
    model.eval()
    y, _ = query_condition(model, prompts)
    y = y.float()
    ybar = y.mean(0, keepdim=True)
    # Colour is read on the last half of the shapes, never seen when fitting the reader; shape likewise
    # (ShapesConfig guarantees >= 3 shapes and >= 2 colours, so both halves are non-empty).
    held_shapes = shape >= len(cfg.shapes) - len(cfg.shapes) // 2
    held_colours = colour >= len(cfg.colors) - len(cfg.colors) // 2
    report: dict[str, Any] = {
        "prompts": len(prompts),
        "cond_between_prompt_std": float(y.std(0).mean()),
        "cond_mean_abs": float(y.abs().mean()),
        "colour_share_of_variance": variance_share(y, colour),
        "shape_share_of_variance": variance_share(y, shape),
        "colour_readable": centroid_accuracy(y, colour, ~held_shapes),
        "shape_readable": centroid_accuracy(y, shape, ~held_colours),
        "chance": {"colour": 1 / len(cfg.colors), "shape": 1 / len(cfg.shapes)},
        "samples": [],
    }
    seeds = [sample_seed(seed, p, 0) for p in prompts]
    for k in amplify:
        images = model.decode_latents(sample_latents(model, ybar + k * (y - ybar), seeds))
        hits = {"colour_present": 0, "shape_present": 0, "correct": 0}
        for line, image in zip(lines, images):
            pil, want = tensor_to_pil(image.cpu()), line["include"][0]
            found = detect_objects(pil, cfg)
            hits["colour_present"] += any(d.color == want["color"] for d in found)
            hits["shape_present"] += any(d.shape == want["class"] for d in found)
            hits["correct"] += evaluate(found, line, cfg)[0]
        report["samples"].append({"amplify": k, **{name: v / len(lines) for name, v in hits.items()}})
    return report
