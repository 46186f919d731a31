"""`unimodal caption IMAGE [IMAGE ...] --model DIR [--question Q] [--temperature T --top-p P --seed S]`.

Prints one line per image: the model's answer to `--question` (default "Describe this image.").
A `.safetensors` latent (key "latent", as `unimodal generate` writes) is read directly.
"""
from __future__ import annotations

import json

from unimodal.commands._args import int_in, text_arg
from unimodal.commands._unified_io import add_model_args, load_model


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("caption", help="caption images (or latents) / answer a question about them")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_LATENT")
    add_model_args(p)
    p.add_argument("--question", type=text_arg, default=None, help='default: "Describe this image."')
    p.add_argument("--max-new-tokens", type=int_in(1), default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimodal.unified.chat import CAPTION_QUESTION
    from unimodal.unified.generate import caption
    from unimodal.unified.io import latents_of, read_inputs

    inputs = read_inputs(args.inputs)
    model = load_model(args)
    result = caption(model, latents=latents_of(model, inputs), question=args.question or CAPTION_QUESTION,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for path, text in zip(args.inputs, result.texts):
        print(json.dumps({"input": path, "caption": text}) if args.json else text)
    return 0
