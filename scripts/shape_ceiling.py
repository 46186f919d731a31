"""Can a DiT draw shapes in this latent space, and how fast? A label-conditioned DiT per codec.

    python scripts/shape_ceiling.py [--model DIR] [--codecs tower pixel] [--shift-scales 3] [--steps 3600]
        [--heads none dh] [--batch-size 32] [--width 128] [--depth 4] [--train-images 2000]
        [--object-size 0.375 0.375] [--snap 8] [--shapes circle square ...] [--from-real 0.3 0.6 0.85]
        [--device cpu] [--out DIR]

The findings' experiment (unimodal/shapes/findings.py): single-object renders of every (colour,
shape) class, encoded by a codec, a class-conditional LightningDiT trained on them, samples of
every class decoded and scored at `--checkpoints` points: "color_accuracy" (one object of the asked
colour), "accuracy" (one object of the asked colour and shape) and "shape_given_color" (their
ratio; chance = 1 / number of shapes). The label hands the DiT colour and shape directly, so what
it cannot learn here no prompt path will give it. Codecs:
- tower: the model's frozen encoder and its RAE decoder (the latents the unified model generates);
- pixel: the lossless control, each tower-sized pixel patch one token (`findings.PixelCodec`).
`--object-size`, `--snap` (the layout grid; 0 places objects anywhere) and `--shapes` change the
single-object world (the tower must still reconstruct it: see each codec's ceiling). `--from-real T`
also scores held-out latents noised to time T and sampled back from there: with the layout given
(small T) it measures the DiT's fine detail, at large T its layout. `--heads dh` adds the DiT^DH wide shallow head (RAE section 5).
Each (codec, shift scale, head) is one run with the same data, seeds and DiT body; every curve point
carries the step, the wall and CPU seconds since the run started, and a sample grid (one row per
shape) goes to `--out`. "reconstruction_accuracy" (decoded real latents) is each codec's ceiling,
and "steps_to" the first checkpoint at which accuracy reaches 0.5 and 0.9. The last line of stdout
is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from unimodal.config import ConfigError
from unimodal.shapes.findings import (Experiment, PixelCodec, Whitening, encode_all, finding_settings,
                                      single_object_world, steps_to_reach)
from unimodal.shipped import resolve_model_dir
from unimodal.unified.model import UnifiedModel

CODECS = ("tower", "pixel")
HEADS = ("none", "dh")
WHITENING = ("none", "pca")


def run_curve(exp: Experiment, decode, shift: float, head: bool, name: str, log,
              from_real: tuple[float, ...] = ()) -> list[dict]:
    """Train the label-conditioned DiT on `exp`'s latents; one scored point per checkpoint, with
    the accuracy of held-out latents noised to each time in `from_real` and sampled back."""
    curve: list[dict] = []
    t0, cpu0 = time.time(), time.process_time()

    def checkpoint(step: int, dit) -> None:
        seconds, cpu_seconds = round(time.time() - t0, 1), round(time.process_time() - cpu0, 1)
        latents, labels = exp.sample(dit, shift)
        scores = exp.score(latents, labels, decode, f"{name}_step_{step}")
        ratio = scores["accuracy"] / scores["color_accuracy"] if scores["color_accuracy"] else None
        denoised = {f"{t:g}": exp.score(*exp.denoise_from(dit, shift, t), decode, f"{name}_step_{step}_from_{t:g}")
                    ["accuracy"] for t in from_real}
        curve.append({"step": step, "seconds": seconds, "cpu_seconds": cpu_seconds, **scores,
                      "shape_given_color": ratio, **({"from_real": denoised} if from_real else {})})
        log(f"{name} step {step}: {curve[-1]}")

    exp.train_dit(exp.train_latents, shift, name, head=head, on_checkpoint=checkpoint)
    return curve


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    ap.add_argument("--shift-scales", nargs="+", type=float, default=[3.0],
                    help="time shifts to try, in units of the dimension shift sqrt(N C / 4096)")
    ap.add_argument("--whitening", nargs="+", default=["none"], choices=WHITENING,
                    help="latents as the codec gives them (none) or PCA-whitened over the training tokens (pca)")
    ap.add_argument("--heads", nargs="+", default=["none"], choices=HEADS,
                    help="DiT heads to try: none (LightningDiT) or dh (DiT^DH, --head-width wide)")
    ap.add_argument("--head-width", type=int, default=192)
    ap.add_argument("--object-size", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                    help="object box side, fractions of the image side (default: the world's)")
    ap.add_argument("--snap", type=int, default=None,
                    help="layout grid: object boxes on multiples of 1/SNAP of the side (default: the world's)")
    ap.add_argument("--shapes", nargs="+", default=None, help="the world's shape set (default: all five)")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=128, help="DiT width (>= the codec's channels: the width rule)")
    ap.add_argument("--depth", type=int, default=4, help="DiT depth")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--from-real", nargs="+", type=float, default=[], metavar="T",
                    help="also score held-out latents noised to time T and sampled back (SDEdit): low T tests "
                         "the DiT's fine detail with the layout given, high T its layout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the DiTs train and sample (cpu or cuda)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the sample grids")
    args = ap.parse_args(argv)
    if args.steps < args.checkpoints or args.checkpoints < 1:
        ap.error(f"need 1 <= --checkpoints <= --steps, got {args.checkpoints} and {args.steps}")
    if any(not 0 < t <= 1 for t in args.from_real):
        ap.error(f"--from-real times must be in (0, 1], got {args.from_real}")
    if any(s <= 0 for s in args.shift_scales):
        ap.error(f"--shift-scales must be > 0, got {args.shift_scales}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    t0 = time.time()
    model_dir = resolve_model_dir(args.model)
    rae = UnifiedModel.from_pretrained(model_dir).rae
    try:
        settings = finding_settings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, dit_width=args.width,
                                    dit_depth=args.depth, train_images=args.train_images,
                                    checkpoints=args.checkpoints, seed=args.seed, head_width=args.head_width)
        world = single_object_world(rae.config.encoder.image_size)
        changes = {"shapes": tuple(args.shapes)} if args.shapes else {}
        if args.snap is not None:
            changes["snap"] = args.snap
        if args.object_size:
            changes.update(min_size=args.object_size[0], max_size=args.object_size[1])
        world = world.replace(**changes)
    except ConfigError as e:
        ap.error(str(e))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    tower = Experiment.build(rae, settings, world, log=log, out=args.out, device=args.device)
    pixel = PixelCodec(rae.config.encoder.image_size, rae.config.encoder.patch_size)
    codecs = {"tower": (tower, rae.decode),
              "pixel": (dataclasses.replace(tower, train_latents=encode_all(pixel.encode, tower.train_images),
                                            eval_latents=encode_all(pixel.encode, tower.eval_images)), pixel.decode)}
    narrow = {c: codecs[c][0].train_latents.shape[2] for c in args.codecs
              if codecs[c][0].train_latents.shape[2] > args.width}
    if narrow:
        ap.error(f"--width {args.width} is below the token channels of {narrow} (the RAE paper's width rule)")
    runs, ceilings = [], {}
    for codec, whitening in itertools.product(args.codecs, args.whitening):
        exp, decode = codecs[codec]
        if whitening == "pca":
            white = Whitening(exp.train_latents)
            exp = dataclasses.replace(exp, train_latents=white.encode(exp.train_latents),
                                      eval_latents=white.encode(exp.eval_latents))
            decode = white.decode(decode)
        ceilings[codec] = {"latent_shape": list(exp.train_latents.shape[1:]), **exp.reconstruction(exp.eval_latents, decode)}
        for scale, head in itertools.product(args.shift_scales, args.heads):
            exp = dataclasses.replace(exp, settings=settings.replace(shift_scale=scale))
            shift = exp.shift(exp.train_latents)
            name = f"{codec}_shift{scale:g}" + ("_white" if whitening == "pca" else "") + ("_dh" if head == "dh" else "")
            curve = run_curve(exp, decode, shift, head == "dh", name, log, tuple(args.from_real))
            points = [(p["step"], p["accuracy"]) for p in curve]
            runs.append({"codec": codec, "whitening": whitening, "shift_scale": scale, "head": head,
                         "shift": round(shift, 4), "curve": curve,
                         "steps_to": {str(a): steps_to_reach(points, a) for a in (0.5, 0.9)}})
    report = {"model": str(model_dir), "settings": settings.to_dict(), "world": world.to_dict(),
              "device": args.device,
              "shape_chance": 1 / len(tower.world.shapes), "codecs": ceilings, "runs": runs,
              "seconds": round(time.time() - t0, 1)}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
