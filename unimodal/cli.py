"""The `unimodal` console script: a thin dispatcher over `unimodal.commands.*`.

Each command module defines `add_parser(subparsers)` that registers its sub-parser and sets
`func` to a `run(args)` callable; heavy imports stay inside `run` so `unimodal --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from unimodal import __version__
from unimodal.config import ConfigError, InputError, UserError
from unimodal.utils.allocator import keep_freed_memory

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
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of one line (unimodal --debug COMMAND ...)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"unimodal.commands.{name}").add_parser(subparsers)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest sub-parser `args` went through (`unimodal train dit` -> the `dit` parser), so an
    error shows that command's usage, not the root one. argparse keeps sub-parsers only in its
    private `_actions`."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action else None
        if chosen not in getattr(action, "choices", {}):
            return parser
        parser = action.choices[chosen]


# The user's errors, each printed as one line "unimodal COMMAND: error: ..." with its exit status:
# 2 for a command line that cannot work (a flag, a missing path, a config), 1 for an input the
# run could not use (a broken image or weights file, a prompt too long for the model). Anything
# else is a bug and keeps its traceback.
EXIT_STATUS = {UserError: 2, ConfigError: 2, FileNotFoundError: 2, InputError: 1}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Only commands that take config overrides accept `--key=value` beyond their own flags.
        if not hasattr(args, "overrides") or any("=" not in e for e in extras):
            command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = list(args.overrides) + extras
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    # Keep freed memory for the next step (unimodal/utils/allocator.py); the user's own allocator
    # settings, or another C library, leave glibc's defaults in place.
    keep_freed_memory()
    # The Shapes world is the embedded default data: importing it adds `data.source=shapes` for every
    # command. Here, not at the top, so that `unimodal --help` stays instant (it imports torch).
    import unimodal.shapes  # noqa: F401
    return run_command(args, f"unimodal {args.command}", debug=args.debug)


def run_command(args: argparse.Namespace, prog: str, debug: bool = False) -> int:
    """`args.func(args)`'s exit status; a user error (EXIT_STATUS) is one line on stderr instead
    of a traceback, unless `debug`."""
    try:
        return int(args.func(args) or 0)
    except tuple(EXIT_STATUS) as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return next(code for cls, code in EXIT_STATUS.items() if isinstance(e, cls))


if __name__ == "__main__":
    sys.exit(main())
