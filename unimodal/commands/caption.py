"""`unimodal caption IMAGE [IMAGE ...] --model DIR [--question Q] [--temperature T --top-p P --seed S]`.

Prints one line per image: the model's answer to `--question` (default "Describe this image.").
A `.safetensors` latent (key "latent", as `unimodal generate` writes) is read directly.
"""
from __future__ import annotations

import json

from unimodal.commands._unified_io import add_model_args, load_image, load_latent, load_model


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("caption", help="caption images (or latents) / answer a question about them")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_LATENT")
    add_model_args(p)
    p.add_argument("--question", default=None, help='default: "Describe this image."')
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    p.set_defaults(func=run)


def latents_of(model, paths) -> "torch.Tensor":
    import torch

    out = []
    for path in paths:
        if str(path).endswith(".safetensors"):
            out.append(load_latent(path).to(model.device))
        else:
            out.append(model.encode_images(load_image(path)[None])[0])
    return torch.stack(out)


def run(args) -> int:
    from unimodal.unified.chat import CAPTION_QUESTION
    from unimodal.unified.generate import caption

    model = load_model(args)
    result = caption(model, latents=latents_of(model, args.inputs), question=args.question or CAPTION_QUESTION,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for path, text in zip(args.inputs, result.texts):
        print(json.dumps({"input": path, "caption": text}) if args.json else text)
    return 0
