"""`unimodal generate "PROMPT" [...] --model DIR [--n N --keep K] [--seed S] [--steps T] [--cfg W] [--out DIR]`.

Writes, per kept candidate, a PNG and its latent (.safetensors, key "latent"), and one JSON
manifest per prompt listing every candidate with its seed and judge scores. Names carry the prompt,
the run seed and the candidate index, and never overwrite an existing file (a "-1", "-2" suffix is
added instead). Any image can be regenerated from (seed, prompt, index).
"""
from __future__ import annotations

import json
from pathlib import Path

from unimodal.commands._args import (CFG_HELP, MAX_CANDIDATES, MAX_STEPS, N_HELP, STEPS_HELP, int_in, positive_float,
                                     text_arg)
from unimodal.commands._unified_io import add_model_args, claim, load_model, slug


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="text to image with best-of-N self-verification")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", type=text_arg,
                   help="what to draw: non-empty UTF-8 text of at most as many tokens as the model's LLM "
                        "positions leave beside its longest task conversation (406 for models/shapes)")
    add_model_args(p)
    p.add_argument("--n", type=int_in(1, MAX_CANDIDATES), default=1, help=N_HELP)
    p.add_argument("--keep", type=int_in(1, MAX_CANDIDATES), default=None,
                   help="best candidates kept, 1..n (default: all n)")
    p.add_argument("--judge", choices=["yes_prob", "likelihood", "none"], default="yes_prob")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None, help=STEPS_HELP)
    p.add_argument("--cfg", type=positive_float, default=None, help=CFG_HELP)
    p.add_argument("--out", default="outputs/generate")
    p.set_defaults(func=run)


def run(args) -> int:
    from safetensors.torch import save_file
    from torchvision.utils import save_image

    from unimodal.cli import UserError
    from unimodal.unified.generate import generate_images

    if args.keep is not None and args.keep > args.n:
        raise UserError(f"--keep {args.keep} is more than --n {args.n}; keep at most the candidates drawn")
    if args.judge == "none" and args.keep not in (None, args.n):
        raise UserError("--keep below --n needs a judge to choose by; drop --judge none")
    model = load_model(args)
    judge = None if args.judge == "none" else args.judge
    result = generate_images(model, args.prompts, n=args.n, keep=args.keep, judge=judge, seed=args.seed,
                             num_steps=args.steps, cfg_scale=args.cfg)
    out = Path(args.out)
    for prompt, cands in zip(result.prompts, result.candidates):
        stem = f"{slug(prompt)}-seed{args.seed}"
        rows = []
        for c in cands:
            row = {"index": c.index, "seed": c.seed, "kept": c.kept, "yes_prob": c.yes_prob, "likelihood": c.likelihood}
            if c.kept:
                png = claim(out, f"{stem}-{c.index}", ".png")
                save_image(c.image, str(png))
                lat = claim(out, f"{stem}-{c.index}", ".safetensors")
                save_file({"latent": c.latent.contiguous()}, str(lat))
                row.update(image=png.name, latent=lat.name)
            rows.append(row)
        manifest = claim(out, stem, ".json")
        manifest.write_text(json.dumps({"prompt": prompt, "run_seed": args.seed, "n": args.n, "judge": judge,
                                        "steps": args.steps, "cfg": args.cfg, "model": str(args.model),
                                        "candidates": rows}, indent=2) + "\n")
        print(manifest)
    return 0

