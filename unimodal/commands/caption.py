"""`unimodal caption IMAGE [IMAGE ...] --model DIR [--question Q] [--temperature T --top-p P --seed S]`
and the batch form `unimodal caption --data SOURCE --out captions.jsonl`.

Prints one line per image: the model's answer to `--question` (default "Describe this image.").
A `.safetensors` latent (key "latent", as `unimodal generate` writes) is read directly.
`--data` takes what `unimodal finetune --data` takes (an image folder, parquet / jsonl / csv files,
webdataset shards, a `datasets` folder) and appends {"file_name", "text"} rows to `--out` as it
goes; rerunning the command skips the images already there. `--backend vllm` serves the LLM on vLLM.
"""
from __future__ import annotations

import json
import sys

from unimodal.commands._args import int_in, text_arg
from unimodal.commands._unified_io import add_backend_args, add_model_args, load_model, vllm_settings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("caption", help="caption images (or latents) / answer a question about them")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_LATENT")
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--question", type=text_arg, default=None, help='default: "Describe this image."')
    p.add_argument("--max-new-tokens", type=int_in(1), default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
    g = p.add_argument_group("batch form: a folder or dataset into JSONL (resumable)")
    g.add_argument("--data", default=None, metavar="SOURCE", help="images to caption, as `unimodal finetune --data`")
    g.add_argument("--out", default=None, metavar="JSONL", help="captions file, appended to (needed with --data)")
    g.add_argument("--batch-size", type=int_in(1), default=16, help="images per captioning call (16)")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimodal.config import UserError

    if bool(args.inputs) == bool(args.data):
        raise UserError("give image files or --data SOURCE --out FILE.jsonl (one of the two)")
    if args.data and not args.out:
        raise UserError("--data needs --out FILE.jsonl (the captions file it appends to)")
    if args.out and not args.data:
        raise UserError("--out is the batch form's captions file; give --data SOURCE with it")
    if args.data and args.temperature > 0:
        raise UserError("the batch form decodes greedily (a resumed file must not mix samples); drop --temperature")
    return run_batch(args) if args.data else run_files(args)


def run_files(args) -> int:
    from unimodal.unified.backends import open_reader
    from unimodal.unified.chat import CAPTION_QUESTION
    from unimodal.unified.io import latents_of, read_inputs

    inputs = read_inputs(args.inputs)
    settings = vllm_settings(args)
    model = load_model(args)
    with open_reader(model, args.backend, settings) as reader:
        result = reader.caption(latents_of(model, inputs), question=args.question or CAPTION_QUESTION,
                                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed)
    for path, text in zip(args.inputs, result.texts):
        print(json.dumps({"input": path, "caption": text}) if args.json else text)
    return 0


def run_batch(args) -> int:
    from unimodal.finetune.captioning import caption_to_jsonl
    from unimodal.finetune.sources import resolve_source
    from unimodal.unified.backends import open_reader
    from unimodal.unified.chat import CAPTION_QUESTION

    source, _ = resolve_source(args.data, captions_optional=True)
    settings = vllm_settings(args)
    model = load_model(args)
    with open_reader(model, args.backend, settings) as reader:
        counts = caption_to_jsonl(reader, source, args.out, image_size=model.config.rae.encoder.image_size,
                                  question=args.question or CAPTION_QUESTION, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"out": args.out, **counts}))
    return 0
