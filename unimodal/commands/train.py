"""`unimodal train STAGE --config FILE [--deepspeed JSON] [key=value ...]`."""
from __future__ import annotations

import argparse
import importlib

# stage name -> (module, help). Each module exposes `train(config_path, overrides, deepspeed_config)`.
STAGES = {
    "decoder": ("unimodal.train.decoder", "stage 1: the RAE pixel decoder on a frozen encoder"),
    "dit": ("unimodal.train.dit", "stage 2: a class-conditional RAE-DiT (ImageNet-style data)"),
    "pretrain": ("unimodal.train.pretrain", "unified text-to-image + understanding pretraining"),
    "finetune": ("unimodal.train.finetune", "unified finetuning on high-quality data"),
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="run a training stage")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (module, help_text) in STAGES.items():
        p = stages.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="experiment YAML under configs/")
        p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (configs/deepspeed/zeroN.json)")
        p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
        p.add_argument("overrides", nargs="*", help="key=value or --key=value overrides")
        p.set_defaults(func=_run, module=module)


def _run(args) -> int:
    module = importlib.import_module(args.module)
    module.train(args.config, args.overrides, args.deepspeed)
    return 0
