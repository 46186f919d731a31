"""The RAE / Scale-RAE papers' findings at toy scale, on the Shapes world (unimodal/shapes/findings.py).

    python scripts/paper_findings.py FINDING [--model DIR] [--steps N] [--quick] [--seed S] [--out DIR]

FINDING is one of
  shift  DiT trained and sampled at alpha = 1, the dimension shift sqrt(N*C/4096) and 3x it (the recipe's)
  dh     LightningDiT vs DiT^DH (the same body plus a wide shallow head), same steps
  noise  RAE decoders trained with and without noise-augmented decoding: PSNR and generation accuracy
  vae    a small conv VAE + the same DiT on its latents vs the RAE: accuracy curves, steps to reach

Progress goes to stderr; the last line of stdout is one JSON object (finding, settings, numbers,
wall time, conclusion). --out DIR also writes DIR/FINDING.json and the sample grids. The default
settings take a few minutes a finding on one CPU core; --quick well under a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from unimodal.shapes.findings import FINDINGS, finding_settings, run_finding
from unimodal.shipped import resolve_model_dir


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("finding", choices=FINDINGS, metavar="FINDING", help=f"one of: {', '.join(FINDINGS)}")
    ap.add_argument("--model", default=None, help="unified model directory (default: the shipped Shapes model)")
    ap.add_argument("--steps", type=int, default=None, help="DiT training steps (default 400, 40 with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, well under a minute a finding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for FINDING.json and the sample grids")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: these toy models gain little from more)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from unimodal.unified.model import UnifiedModel

    model_dir = resolve_model_dir(args.model)
    rae = UnifiedModel.from_pretrained(model_dir).rae
    settings = finding_settings(args.quick, steps=args.steps, seed=args.seed)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"finding {args.finding} on {model_dir} ({'quick' if args.quick else 'default'} settings)")
    result = {**run_finding(args.finding, rae, settings, log=log, out=args.out), "model": str(model_dir)}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.finding}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
