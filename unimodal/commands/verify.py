"""`unimodal verify IMAGE_OR_LATENT "PROMPT" --model DIR`: the model's own judgement of a match.

Prints one JSON object: `yes_prob` (P(yes) vs "no" for "Does this image align with the prompt: {p}?")
and `likelihood` (mean log-prob of the prompt as the description of the image), both read from
the latent without decoding it.
"""
from __future__ import annotations

import json

from unimodal.commands._args import text_arg
from unimodal.commands._unified_io import add_backend_args, add_model_args, load_model, vllm_settings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="self-verification: does an image (or latent) match a prompt?")
    p.add_argument("input", metavar="IMAGE_OR_LATENT")
    p.add_argument("prompt", metavar="PROMPT", type=text_arg, help="non-empty UTF-8 text, at most the model's "
                   "prompt length in tokens (see `unimodal generate --help`)")
    add_model_args(p)
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from unimodal.unified.backends import open_reader
    from unimodal.unified.generate import check_prompts
    from unimodal.unified.io import latents_of, read_inputs

    inputs = read_inputs([args.input])
    settings = vllm_settings(args)
    model = load_model(args)
    check_prompts(model, [args.prompt])  # before a vLLM engine starts for it
    with open_reader(model, args.backend, settings) as reader:
        scores = reader.verify(latents_of(model, inputs), [args.prompt])
    print(json.dumps({"input": args.input, "prompt": args.prompt, "yes_prob": float(scores.yes_prob[0]),
                      "likelihood": float(scores.likelihood[0])}))
    return 0
