"""`unimodal finetune --data SOURCE --model DIR --out DIR [--config YAML] [--deepspeed JSON] [key=value ...]`.

SOURCE: an image folder with metadata.jsonl / metadata.csv captions, a parquet / jsonl / csv file
or glob (image paths or bytes), webdataset .tar shards (a folder, glob or brace list such as
"shards/{000..009}.tar"), a `datasets` save_to_disk folder or a hub id. Rerunning the same command
resumes the run in --out. Exit status: 0 done, 1 stopped (divergence, too much bad data), 2 bad input.
See `unimodal.finetune` for what the run writes.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SOURCE", help="training images with captions (see above)")
    p.add_argument("--model", required=True, metavar="DIR", help="unified model directory to start from")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (rerun the command to resume)")
    p.add_argument("--config", default=None, help="finetune YAML (configs/finetune_lora.yaml, finetune_full.yaml)")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (configs/deepspeed/zero2.json, zero3.json)")
    p.add_argument("--self-caption", action="store_true",
                   help="caption images that have no caption with the model itself first (run_dir/self_captions.jsonl)")
    p.add_argument("--backend", choices=["torch", "vllm"], default=None,
                   help="engine of --self-caption (data.caption_backend; default torch): vllm serves the LLM on "
                        "vLLM ($UNIMODAL_VLLM_PYTHON, else this Python; see the README's 'vLLM backend')")
    p.add_argument("--export-only", action="store_true",
                   help="no training: rewrite run_dir/export (and adapters) from the newest checkpoint")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. llm_mode=lora train.total_steps=500")
    p.set_defaults(func=run)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="finetune a unified model on your own images (LoRA or full)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


def run(args) -> int:
    from pathlib import Path

    from unimodal.data.sources import DataQualityError
    from unimodal.finetune import DivergenceError, export_run, finetune, load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides, data=args.data, model=args.model, out=args.out,
                               self_caption=args.self_caption, caption_backend=args.backend)
    if cfg.data.self_caption and cfg.data.caption_backend == "vllm" and not args.export_only:
        from unimodal.unified.vllm_backend import VllmSettings, vllm_python

        vllm_python(VllmSettings())  # a missing vLLM is one line now, not after the data scan
    try:
        if args.export_only:
            run_dir = Path(cfg.train.run_dir)
            paths = export_run(cfg, full_dir=run_dir / "export",
                               adapters_dir=run_dir / "adapters" if cfg.llm_mode == "lora" else None)
            for kind, path in paths.items():
                print(f"{kind}: {path}")
            return 0
        result = finetune(cfg, args.deepspeed)
    except (DivergenceError, DataQualityError) as e:
        print(f"unimodal finetune: stopped: {e}", file=sys.stderr)
        return 1
    print(f"model: {result.export}")
    if result.adapters is not None:
        print(f"adapters: {result.adapters}")
    print(f"report: {result.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m unimodal.commands.finetune ...`: the same as `unimodal finetune ...`."""
    from unimodal.config import ConfigError

    parser = argparse.ArgumentParser(prog="unimodal finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args, extras = parser.parse_known_args(argv)
    if any("=" not in e for e in extras):   # `--key=value` overrides pass, as with the `unimodal` script
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.overrides = list(args.overrides) + extras
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"unimodal finetune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
