"""Does the prompt reach the DiT? Probe a unified model's prompt -> conditioning -> sample path.

    python scripts/probe_conditioning.py [--model DIR] [--amplify 1 3 10] [--seed S] [--shapes-config F]

For GenEval's colour prompt of every (colour, shape) pair it measures the conditioning the
connector hands the DiT (its spread between prompts, the shares of that spread following the colour
and the shape word, whether each can be read back for unseen combinations) and one sample per prompt
(asked colour present, asked shape present, both in one object); `--amplify` redraws the samples with
the prompt-dependent part of the conditioning scaled (see unimodal/shapes/conditioning.py).
The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from unimodal.config import load_config
from unimodal.shapes.conditioning import probe_conditioning
from unimodal.shapes.config import ShapesConfig
from unimodal.shipped import resolve_model_dir
from unimodal.unified.model import UnifiedModel


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--amplify", type=float, nargs="+", default=[1.0],
                    help="scales of the prompt-dependent part of the conditioning to sample with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes-config", default=None, help="ShapesConfig YAML/JSON (default: the built-in world)")
    args = ap.parse_args(argv)
    if any(k <= 0 for k in args.amplify):
        ap.error(f"--amplify scales must be > 0, got {args.amplify}")
    t0 = time.time()
    model_dir = resolve_model_dir(args.model)
    torch.manual_seed(args.seed)
    report = probe_conditioning(UnifiedModel.from_pretrained(model_dir), load_config(ShapesConfig, args.shapes_config),
                                amplify=args.amplify, seed=args.seed)
    report = {"model": str(model_dir), **report, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
