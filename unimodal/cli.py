"""The `unimodal` console script: a thin dispatcher over `unimodal.commands.*`.

Each command module defines `add_parser(subparsers)` that registers its sub-parser and sets
`func` to a `run(args)` callable; heavy imports stay inside `run` so `unimodal --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from unimodal import __version__
from unimodal.config import ConfigError

# Module names under unimodal.commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "demo",
    "recipe",
    "train",
    "generate",
    "caption",
    "verify",
    "sample",
    "eval",
    "stats",
    "cache_latents",
    "convert",
    "finetune",
    "chat",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unimodal",
        description="Train, evaluate and chat with a unified RAE-DiT + Qwen-2.5 model.",
    )
    parser.add_argument("--version", action="version", version=f"unimodal {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"unimodal.commands.{name}").add_parser(subparsers)
    return parser


class UserError(Exception):
    """A bad input from the user: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Only commands that take config overrides accept `--key=value` beyond their own flags.
        if not hasattr(args, "overrides") or any("=" not in e for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = list(args.overrides) + extras
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, FileNotFoundError) as e:
        print(f"unimodal {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
