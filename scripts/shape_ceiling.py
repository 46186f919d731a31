"""Can a DiT draw shapes in this latent space at all? A label-conditioned DiT over training time.

    python scripts/shape_ceiling.py [--model DIR] [--steps 3600] [--depth 4] [--train-images 2000] [--out DIR]

The findings' experiment (unimodal/shapes/findings.py): single-object renders of every (colour,
shape) class encoded by the model's frozen tower, a class-conditional LightningDiT (the recipe's
width and time shift) trained on them, samples of every class decoded by the model's decoder and
scored at `--checkpoints` points: "color_accuracy" (one object of the asked colour), "accuracy"
(one object of the asked colour and shape) and their ratio, the shape accuracy among samples of the
right colour (chance = 1 / number of shapes). The label hands the DiT colour and shape directly, so
what it cannot learn here no prompt path will give it. "reconstruction_accuracy" (decoded real
latents) is the ceiling through this decoder. The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from unimodal.shapes.findings import Experiment, finding_settings
from unimodal.shipped import resolve_model_dir
from unimodal.unified.model import UnifiedModel


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--depth", type=int, default=4, help="DiT depth (the recipe's DiT: 4)")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the sample grids")
    args = ap.parse_args(argv)
    if args.steps < args.checkpoints or args.checkpoints < 1:
        ap.error(f"need 1 <= --checkpoints <= --steps, got {args.checkpoints} and {args.steps}")
    t0 = time.time()
    model_dir = resolve_model_dir(args.model)
    rae = UnifiedModel.from_pretrained(model_dir).rae
    settings = finding_settings(steps=args.steps, dit_depth=args.depth, train_images=args.train_images,
                                checkpoints=args.checkpoints, seed=args.seed)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    exp = Experiment.build(rae, settings, log=log, out=args.out)
    shift = exp.shift(exp.train_latents)
    curve = []

    def checkpoint(step: int, dit) -> None:
        latents, labels = exp.sample(dit, shift)
        scores = exp.score(latents, labels, rae.decode, f"step_{step}")
        ratio = scores["accuracy"] / scores["color_accuracy"] if scores["color_accuracy"] else None
        curve.append({"step": step, **scores, "shape_given_color": ratio})
        log(f"step {step}: {curve[-1]}")

    _, final_loss = exp.train_dit(exp.train_latents, shift, "label-conditioned DiT", on_checkpoint=checkpoint)
    report = {"model": str(model_dir), "settings": settings.to_dict(), "shift": round(shift, 4),
              "shape_chance": 1 / len(exp.world.shapes), "final_loss": final_loss, "curve": curve,
              **exp.reconstruction(exp.eval_latents, rae.decode), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
