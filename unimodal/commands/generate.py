"""`unimodal generate "PROMPT" [...] --model DIR [--n N --keep K] [--judge J] [--verify-on R] [--seed S]
[--num-inference-steps T] [--guidance-scale W] [--out DIR]`.

Writes, per kept candidate, a PNG and its latent (.safetensors, key "latent"), and one JSON
manifest per prompt listing every candidate with its seed and judge scores. Names carry the prompt,
the run seed and the candidate index, and never overwrite an existing file (a "-1", "-2" suffix is
added instead). Any image can be regenerated from (seed, prompt, index).
"""
from __future__ import annotations

import json
from pathlib import Path

from unimodal.commands._args import MAX_CANDIDATES, N_HELP, add_guidance_arg, add_steps_arg, int_in, text_arg
from unimodal.commands._unified_io import add_backend_args, add_model_args, claim, load_model, slug, vllm_settings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="text to image with best-of-N self-verification")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", type=text_arg,
                   help="what to draw: non-empty UTF-8 text of at most as many tokens as the model's LLM "
                        "positions leave beside its longest task conversation (406 for models/shapes)")
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--n", type=int_in(1, MAX_CANDIDATES), default=1, help=N_HELP)
    p.add_argument("--keep", type=int_in(1, MAX_CANDIDATES), default=None,
                   help="best candidates kept, 1..n (default: all n)")
    p.add_argument("--judge", choices=["yes_prob", "likelihood", "none"], default=None,
                   help="best-of-N's score (default: the model's config.json `judge`); none: no judging")
    p.add_argument("--verify-on", choices=["latent", "decoded"], default=None,
                   help="what the judge reads: the generated latent, or its decoded image re-encoded "
                        "(default: the model's config.json `verify_on`)")
    p.add_argument("--seed", type=int, default=0)
    add_steps_arg(p, "--steps")
    add_guidance_arg(p, "--cfg")
    p.add_argument("--out", default="outputs/generate")
    p.set_defaults(func=run)


def run(args) -> int:
    from safetensors.torch import save_file
    from torchvision.utils import save_image

    from unimodal.config import UserError
    from unimodal.unified.backends import open_reader
    from unimodal.unified.generate import check_prompts, generate_images

    if args.keep is not None and args.keep > args.n:
        raise UserError(f"--keep {args.keep} is more than --n {args.n}; keep at most the candidates drawn")
    if args.judge == "none" and args.keep not in (None, args.n):
        raise UserError("--keep below --n needs a judge to choose by; drop --judge none")
    settings = vllm_settings(args)
    model = load_model(args)
    check_prompts(model, args.prompts)  # before a vLLM engine starts for them
    judge = {None: "default", "none": None}.get(args.judge, args.judge)
    with open_reader(model, args.backend, settings) as reader:
        result = generate_images(model, args.prompts, n=args.n, keep=args.keep, judge=judge, seed=args.seed,
                                 num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                                 reader=reader, verify_on=args.verify_on)
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
        manifest.write_text(json.dumps({"prompt": prompt, "run_seed": args.seed, "n": args.n, "judge": result.judge,
                                        "verify_on": args.verify_on or model.config.verify_on,
                                        "num_inference_steps": args.num_inference_steps,
                                        "guidance_scale": args.guidance_scale, "model": str(args.model),
                                        "backend": args.backend,
                                        "candidates": rows}, indent=2) + "\n")
        print(manifest)
    return 0

